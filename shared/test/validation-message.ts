import { ValidationError } from '../src/index.ts'

/** The message of the ValidationError `fn` throws; anything else fails the test. */
export function validationMessage(fn: () => unknown): string {
  try { fn() } catch (e) {
    if (e instanceof ValidationError) return e.message
    throw e
  }
  throw new Error('expected a ValidationError')
}

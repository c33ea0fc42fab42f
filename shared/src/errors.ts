/**
 * The one error type the contract throws for bad input. Anything else escaping the
 * parsers or the renderer is a bug (the property tests hold us to that).
 */
export class ValidationError extends Error {
  override readonly name = 'ValidationError'
  /** The annotation key (or intent field path) the problem is about. */
  readonly key: string
  /** 1-based entry number inside a list value, when the problem is about one entry. */
  readonly entry: number | undefined
  readonly problem: string

  constructor(key: string, problem: string, entry?: { index: number; text: string }) {
    const where = entry ? `entry ${entry.index} ${JSON.stringify(entry.text)}: ` : ''
    super(`${key}: ${where}${problem}`)
    this.key = key
    this.problem = problem
    this.entry = entry?.index
  }
}

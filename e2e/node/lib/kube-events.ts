// core/v1 Events for the API stand-in: create (POST /api/v1/namespaces/{ns}/events) and list
// (GET, per namespace or all), nothing more. Validation as the apiserver does it for an Event
// without eventTime (the legacy recorder's kind, ours): pkg/apis/core/validation/events.go
// ValidateEventCreate -> ValidateObjectMeta (name a DNS subdomain) and legacyValidateEvent
// (involvedObject.namespace must be the event's namespace), answered 422 Invalid; an object
// whose namespace differs from the URL's is 400 BadRequest (apiserver handlers/create.go,
// rest.EnsureObjectNamespaceMatchesRequestNamespace).
import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/

export interface StoredEvent {
  metadata: { name: string; namespace: string; uid: string; resourceVersion: string; creationTimestamp: string }
  involvedObject: { kind?: string; namespace?: string; name?: string; uid?: string }
  reason?: string
  message?: string
  type?: string
  reportingComponent?: string
  reportingInstance?: string
  [k: string]: unknown
}

const PATH = /^\/api\/v1\/(?:namespaces\/([^/]+)\/)?events$/

export class KubeEvents {
  readonly events: StoredEvent[] = []
  private rv = 1

  /** Handles the request when it is for events (true), else leaves it to the stand-in (false). */
  async handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
    const m = PATH.exec(url.pathname)
    if (!m) return false
    const ns = m[1]
    const send = (code: number, body: object) => { res.writeHead(code, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)) }
    const status = (code: number, reason: string, message: string) => send(code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code })
    if (req.method === 'GET') {
      send(200, { kind: 'EventList', apiVersion: 'v1', metadata: { resourceVersion: String(this.rv) }, items: this.events.filter((e) => !ns || e.metadata.namespace === ns) })
      return true
    }
    if (req.method !== 'POST' || !ns) { status(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`); return true }
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    let obj: Partial<StoredEvent> & { metadata?: { name?: string; namespace?: string; generateName?: string } }
    try { obj = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof obj } catch { status(400, 'BadRequest', 'the body is not JSON'); return true }
    const objNs = obj.metadata?.namespace ?? ns
    if (objNs !== ns) { status(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request'); return true }
    const name = obj.metadata?.name ?? ''
    const errs: string[] = []
    if (!name) errs.push('metadata.name: Required value: name or generateName is required')
    else if (name.length > 253 || !DNS1123_SUBDOMAIN.test(name)) errs.push(`metadata.name: Invalid value: "${name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character`)
    const involvedNs = obj.involvedObject?.namespace ?? ''
    if (involvedNs ? involvedNs !== ns : ns !== 'default') errs.push(`involvedObject.namespace: Invalid value: "${involvedNs}": does not match event.namespace`)
    if (errs.length) { status(422, 'Invalid', `Event "${name}" is invalid: ${errs.join(', ')}`); return true }
    if (this.events.some((e) => e.metadata.namespace === ns && e.metadata.name === name)) { status(409, 'AlreadyExists', `events "${name}" already exists`); return true }
    const stored = { ...obj, apiVersion: 'v1', kind: 'Event', metadata: { ...obj.metadata, name, namespace: ns, uid: randomUUID(), resourceVersion: String(++this.rv), creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') } } as StoredEvent
    this.events.push(stored)
    send(201, stored)
    return true
  }
}

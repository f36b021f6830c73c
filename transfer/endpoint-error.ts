// Why a transfer's target or source cannot be used. The refusal says which kind it is, so the
// appliance can map it to its error code once (appliance/jobs.ts): the request is wrong
// (invalid), it names a local path the operator has not allowed (not-allowed), or it names a
// block device something else holds (in-use).

export type EndpointRefusal = 'invalid' | 'not-allowed' | 'in-use';

export class EndpointError extends Error {
  readonly refusal: EndpointRefusal;

  constructor(message: string, refusal: EndpointRefusal = 'invalid') {
    super(message);
    this.name = 'EndpointError';
    this.refusal = refusal;
  }
}

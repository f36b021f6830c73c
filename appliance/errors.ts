// Errors of the appliance layer (exports, volumes as a whole) with stable codes; storage errors
// pass through as they are. The API maps both to HTTP statuses in one place (api/errors.ts).

export type ApplianceErrorCode =
  | 'EBUSY' // clients are attached
  | 'EINVAL' // a request the appliance cannot take
  | 'ENOENT' // no such export
  | 'EEXIST' // the name is taken
  | 'EACCES' // a local device or file the operator has not allowed (serve --device-allow, --file-root)
  | 'EINUSE'; // a block device that is mounted or held by md, LVM or another program

export class ApplianceError extends Error {
  readonly code: ApplianceErrorCode;
  /** Machine-readable details (for example the clients attached). */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ApplianceErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = 'ApplianceError';
    this.code = code;
    this.details = details;
  }
}

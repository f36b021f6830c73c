// Schema errors in words for people: `tiers[1].every must be: hourly, daily, ...` instead of
// Fastify's `body/tiers/1/every must match a schema in anyOf`. A route opts in with
// `schemaErrorFormatter: readableSchemaErrors({ params, body })`, naming the schemas it declares:
// where a value may take several forms (anyOf, oneOf) the message is the schema's description.

import type { FastifySchemaValidationError } from 'fastify';

type Schema = Record<string, unknown>;
/** Which part of the request failed (Fastify's names). */
type SchemaErrorDataVar = 'body' | 'headers' | 'params' | 'querystring';

const typeNouns: Record<string, string> = {
  integer: 'a whole number',
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  array: 'a list',
  object: 'an object',
  null: 'null',
};

export function readableSchemaErrors(schemas: Partial<Record<SchemaErrorDataVar, unknown>>) {
  return (errors: FastifySchemaValidationError[], dataVar: SchemaErrorDataVar): Error =>
    new Error(describeSchemaErrors(errors, dataVar, (schemas[dataVar] ?? {}) as Schema));
}

/** One sentence for the errors ajv found: the outermost alternative that failed, else the first error. */
export function describeSchemaErrors(errors: FastifySchemaValidationError[], dataVar: SchemaErrorDataVar, schema: Schema): string {
  const alternatives = errors.filter((error) => error.keyword === 'anyOf' || error.keyword === 'oneOf');
  const error = alternatives.length > 0 ? alternatives.reduce((outer, candidate) => (candidate.instancePath.length < outer.instancePath.length ? candidate : outer)) : errors[0];
  if (error === undefined) return `the ${dataVar} is not valid`;
  const where = placeName(dataVar, error.instancePath);
  const params = error.params as Record<string, unknown>;
  const node = schemaAt(schema, error.schemaPath);
  switch (error.keyword) {
    case 'anyOf':
    case 'oneOf':
      return typeof node?.['description'] === 'string' ? `${where} must be: ${node['description']}` : `${where} has none of the accepted forms`;
    case 'required':
      return `${placeName(dataVar, `${error.instancePath}/${String(params['missingProperty'])}`)} is missing`;
    case 'additionalProperties': {
      const known = fieldsOf(node);
      const field = placeName(dataVar, `${error.instancePath}/${String(params['additionalProperty'])}`);
      return `${field} is not a field here${known.length > 0 ? ` (the fields are ${known.join(', ')})` : ''}`;
    }
    case 'type':
      return `${where} must be ${String(params['type'])
        .split(',')
        .map((type) => typeNouns[type] ?? type)
        .join(' or ')}`;
    case 'enum':
      return `${where} must be one of ${(params['allowedValues'] as unknown[]).map((value) => JSON.stringify(value)).join(', ')}`;
    case 'minProperties': {
      const known = fieldsOf(node);
      return `${where} is empty: give ${known.length > 0 ? `at least one of ${known.join(', ')}` : 'at least one field'}`;
    }
    case 'minimum':
    case 'maximum':
      return `${where} must be ${error.keyword === 'minimum' ? 'at least' : 'at most'} ${String(params['limit'])}`;
    default:
      return `${where} ${error.message ?? 'is not valid'}`;
  }
}

function fieldsOf(node: Schema | undefined): string[] {
  return Object.keys((node?.['properties'] ?? {}) as Schema);
}

/** `tiers[1].every` for /tiers/1/every; the whole body or parameter list for the empty path. */
function placeName(dataVar: SchemaErrorDataVar, instancePath: string): string {
  const parts = instancePath.split('/').slice(1);
  if (parts.length === 0) return dataVar === 'body' ? 'the body' : `the ${dataVar}`;
  const name = parts.map((part, index) => (/^\d+$/.test(part) ? `[${part}]` : index === 0 ? part : `.${part}`)).join('');
  return dataVar === 'body' ? name : `${dataVar === 'querystring' ? 'query parameter' : 'parameter'} ${name}`;
}

/** The schema node holding the keyword that failed: its schemaPath without the keyword. */
function schemaAt(schema: Schema, schemaPath: string): Schema | undefined {
  const parts = schemaPath.replace(/^#\/?/, '').split('/').filter((part) => part !== '');
  let node: unknown = schema;
  for (const part of parts.slice(0, -1)) node = (node as Schema | undefined)?.[decodeURIComponent(part.replace(/~1/g, '/').replace(/~0/g, '~'))];
  return typeof node === 'object' && node !== null ? (node as Schema) : undefined;
}

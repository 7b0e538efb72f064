/**
 * Personas: Character Card V1/V2/V3 import and lossless export (JSON and PNG), and compilation of a card
 * into the persona part of the system prompt within a token budget.
 */
export {
  parseCharacterCard,
  exportCharacterCard,
  cardToJson,
  jsonEqual,
  DEFAULT_MAX_CARD_JSON_BYTES,
  MAX_CARD_JSON_DEPTH,
  type CardAsset,
  type CardSpec,
  type CharacterBook,
  type CharacterBookEntry,
  type CharacterCard,
  type JsonExportOptions,
  type JsonObject,
  type ParseCardOptions,
  type PngExportOptions,
} from "./card.js";
export {
  compilePersona,
  DEFAULT_REGEX_TIME_MS,
  MAX_REGEX_KEY_CHARS,
  MAX_REGEX_SCAN_CHARS,
  type CompiledPersona,
  type CompilePersonaOptions,
} from "./compile.js";
export {
  CardChunkMissingError,
  CardDecodeError,
  CardTooLargeError,
  NotACharacterCardError,
  NotPngError,
  PngCrcError,
  PngTruncatedError,
  type CardDecodeProblem,
  type PngProblem,
} from "./errors.js";
export {
  CARD_KEYWORDS,
  DEFAULT_MAX_PNG_BYTES,
  PNG_SIGNATURE,
  encodeChunk,
  findCardText,
  isPng,
  minimalPng,
  readPngChunks,
  readTextChunk,
  writeTextChunks,
  type CardKeyword,
  type PngChunk,
  type PngFile,
  type PngText,
} from "./png.js";
export {
  decodePersonaManifest,
  encodePersonaManifest,
  personaManifestSchema,
  MAX_MANIFEST_BYTES,
  PersonaManifestError,
  PersonaManifestMismatchError,
  type PersonaManifest,
} from "./manifest.js";
export {
  publishPersona,
  readPersona,
  listPersonas,
  checkLoraHeader,
  ADAPTER_HEADER_BYTES,
  InvalidPersonaParameterError,
  NotALoraAdapterError,
  type ListPersonasOptions,
  type PersonaInfo,
  type PersonaRecord,
  type PublishedPersona,
  type PublishPersonaOptions,
  type PublishProgress,
  type ReadPersonaOptions,
  type RoyaltySchedule,
} from "./publish.js";

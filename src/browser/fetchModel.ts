// A Hugging Face model folder fetched over HTTP (or picked as File objects) and opened in memory:
// config.json, generation_config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja
// and model.safetensors (or the shards a model.safetensors.index.json names). Weights are read as
// a stream so progress can be shown; optional files may be missing (HTTP 404).
import { validateWeights, parseHfConfig } from '../io/hfConfig.js';
import { type LoadedModel } from '../io/index.js';
import { SafetensorsFile, type TensorInfo, type TensorStore } from '../io/safetensors.js';
import { checkTokenizerVocab, HfTokenizer } from '../io/tokenizer.js';

/** Download progress of one file (bytes; total null when the server sends no Content-Length). */
export interface DownloadProgress {
  file: string;
  loaded: number;
  total: number | null;
}

/** The slice of the DOM's File used here: a name and its bytes. */
export interface FileLike {
  readonly name: string;
  arrayBuffer(): Promise<ArrayBuffer>;
}

/** Where a model comes from: a folder URL (relative to the page), or the folder's files. */
export type ModelSource = string | URL | Iterable<FileLike> | ArrayLike<FileLike>;

export interface FetchOptions {
  onDownload?: (p: DownloadProgress) => void;
  allowUnusedTensors?: boolean;
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: typeof fetch;
}

/** Reads one named file; null when optional and absent. */
type Reader = (name: string, optional: boolean) => Promise<Uint8Array | null>;

function urlReader(base: URL, opts: FetchOptions): Reader {
  const fetchFn = opts.fetch ?? globalThis.fetch;
  return async (name, optional) => {
    const url = new URL(name, base).href;
    let res: Response;
    try {
      res = await fetchFn(url);
    } catch (e) {
      throw new Error(`${url}: fetch failed (${(e as Error).message})`);
    }
    if (res.status === 404 && optional) return null;
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`);
    const length = Number(res.headers.get('content-length'));
    const total = Number.isSafeInteger(length) && length > 0 ? length : null;
    if (!res.body) {
      const bytes = new Uint8Array(await res.arrayBuffer());
      opts.onDownload?.({ file: name, loaded: bytes.byteLength, total: bytes.byteLength });
      return bytes;
    }
    const chunks: Uint8Array[] = [];
    let loaded = 0;
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      loaded += value.byteLength;
      opts.onDownload?.({ file: name, loaded, total });
    }
    if (total !== null && loaded !== total) throw new Error(`${url}: received ${loaded} of ${total} bytes`);
    if (chunks.length === 1) return chunks[0]!;
    const out = new Uint8Array(loaded);
    let at = 0;
    for (const c of chunks) { out.set(c, at); at += c.byteLength; }
    return out;
  };
}

function filesReader(files: FileLike[], opts: FetchOptions): Reader {
  const byName = new Map(files.map((f) => [f.name.replace(/^.*[\\/]/, ''), f]));
  return async (name, optional) => {
    const f = byName.get(name);
    if (!f) {
      if (optional) return null;
      throw new Error(`the files given have no ${name} (they are: ${[...byName.keys()].join(', ') || 'none'})`);
    }
    const bytes = new Uint8Array(await f.arrayBuffer());
    opts.onDownload?.({ file: name, loaded: bytes.byteLength, total: bytes.byteLength });
    return bytes;
  };
}

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new Error(`${what}: not valid JSON (${(e as Error).message})`);
  }
}

/** Tensors spread over several in-memory safetensors files. */
function shardedStore(source: string, shards: Map<string, SafetensorsFile>, owner: Map<string, SafetensorsFile>): TensorStore {
  const of = (name: string): SafetensorsFile => {
    const s = owner.get(name);
    if (!s) throw new Error(`${source}: no tensor named '${name}'`);
    return s;
  };
  return {
    source,
    names: () => [...owner.keys()],
    has: (name) => owner.has(name),
    info: (name): TensorInfo => of(name).info(name),
    bytes: (name) => of(name).bytes(name),
    close: () => { for (const s of shards.values()) s.close(); },
  };
}

async function readWeights(read: Reader, where: string): Promise<TensorStore> {
  const index = await read('model.safetensors.index.json', true);
  if (!index) {
    const bytes = await read('model.safetensors', false);
    return SafetensorsFile.fromBytes(`${where}model.safetensors`, bytes!);
  }
  const indexName = `${where}model.safetensors.index.json`;
  const map = (parseJson(index, indexName) as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null) throw new Error(`${indexName}: missing 'weight_map'`);
  const shards = new Map<string, SafetensorsFile>();
  const owner = new Map<string, SafetensorsFile>();
  for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
    if (typeof file !== 'string' || /[\\/]/.test(file)) throw new Error(`${indexName}: weight_map['${name}'] must be a file name in the folder`);
    let shard = shards.get(file);
    if (!shard) {
      shard = SafetensorsFile.fromBytes(`${where}${file}`, (await read(file, false))!);
      shards.set(file, shard);
    }
    if (!shard.has(name)) throw new Error(`${indexName}: maps tensor '${name}' to ${file}, which has no such tensor`);
    owner.set(name, shard);
  }
  return shardedStore(indexName, shards, owner);
}

/** Fetches (or reads) a model folder and opens it in memory, validated as loadModel does in Node. */
export async function fetchModel(source: ModelSource, opts: FetchOptions = {}): Promise<LoadedModel> {
  let read: Reader;
  let where: string;
  if (typeof source === 'string' || source instanceof URL) {
    const page = (globalThis as { location?: { href: string } }).location?.href;
    let base: URL;
    try {
      base = new URL(String(source), page);
    } catch {
      throw new Error(`model URL '${String(source)}' is not a URL${page ? '' : ' (outside a page it must be absolute)'}`);
    }
    // A folder: config.json and the rest are resolved against it.
    if (!base.pathname.endsWith('/')) base.pathname += '/';
    read = urlReader(base, opts);
    where = base.href;
  } else {
    read = filesReader(Array.from(source as ArrayLike<FileLike>), opts);
    where = '';
  }
  const text = async (name: string, optional: boolean) => {
    const b = await read(name, optional);
    return b === null ? null : parseJson(b, `${where}${name}`);
  };
  const config = await text('config.json', false);
  const [generationConfig, tokenizerJson, tokenizerConfig, template] = await Promise.all([
    text('generation_config.json', true), text('tokenizer.json', true), text('tokenizer_config.json', true),
    read('chat_template.jinja', true),
  ]);
  const spec = parseHfConfig(config, { generationConfig: generationConfig ?? undefined, source: `${where}config.json` });
  const weights = await readWeights(read, where);
  try {
    validateWeights(spec, weights, { allowUnusedTensors: opts.allowUnusedTensors });
    const tokenizer = tokenizerJson === null ? null : new HfTokenizer(tokenizerJson, tokenizerConfig ?? {}, {
      source: `${where}tokenizer.json`, ...(template ? { chatTemplate: new TextDecoder().decode(template) } : {}),
    });
    if (tokenizer) checkTokenizerVocab(tokenizer, spec);
    return { source: where || 'files', format: 'hf', spec, weights, tokenizer };
  } catch (e) {
    weights.close();
    throw e;
  }
}

// Types for bench/gpu/bundle.mjs (plain JavaScript so that it runs without tsx).
export declare const ROOT: string;
export declare const GPU_DIR: string;
export declare const NODE_XZ: string;
export declare const CARRY: string[];
export declare const LIMIT_BYTES: number;
export declare const DEFAULT_BENCHES: string[];
export declare function prepare(argv?: string[]): Promise<Record<string, unknown>>;
export declare function payloadSize(): { tree: number; carried: [string, number][]; total: number };

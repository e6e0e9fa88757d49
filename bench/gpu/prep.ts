// `npm run bench -- gpu-prep [options]`: prepares what bench/gpu/run.sh needs on the GPU machine
// (bench/gpu/bundle.mjs: node.xz, the addon, the test and bench bundles, the payload check).
import { prepare } from './bundle.mjs';

export async function main(args: string[]): Promise<void> {
  await prepare(args);
}

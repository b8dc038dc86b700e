// Builds src/rstudio.js into a probe component with componentize-js
// (StarlingMonkey). Usage: node build.mjs <wit dir> <output .wasm>
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const [witPath, out] = process.argv.slice(2);
const { component } = await componentize({
  sourcePath: new URL('./src/rstudio.js', import.meta.url).pathname,
  witPath,
  worldName: 'activity-probe',
  // No randomness or incoming HTTP is needed. Keep `clocks` (Date.now()),
  // `http` (fetch) and `stdio` (an exception's message reaches the logs).
  disableFeatures: ['random', 'fetch-event'],
});
await writeFile(out, component);
console.log(out);

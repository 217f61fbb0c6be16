#!/usr/bin/env node
// Multi-document YAML (kubectl kustomize's output) as one JSON array, for jq:
//   node yaml_to_json.js NPM_MODULES_DIR FILE.yaml
'use strict';
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const [modulesDir, file] = process.argv.slice(2);
if (!modulesDir || !file) {
  console.error('usage: yaml_to_json.js NPM_MODULES_DIR FILE.yaml');
  process.exit(2);
}
const YAML = createRequire(path.join(path.resolve(modulesDir), 'package.json'))('yaml');
const objects = [];
for (const doc of YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'))) {
  if (doc.errors.length) {
    console.error(`${file}: ${doc.errors[0].message}`);
    process.exit(1);
  }
  if (doc.contents !== null) objects.push(doc.toJSON());
}
console.log(JSON.stringify(objects));

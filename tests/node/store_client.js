// A stand-in for the seed's store client (mesh/store/client.js): it knows only the
// plain schema (mesh_memory, mesh_memory_fts, mesh_skills) and writes with
// INSERT ... ON CONFLICT(scope, key) DO UPDATE, as the seed's client does.
// Usage: node store_client.js DB COMMAND [ARGS...]; prints one JSON line.
const Database = require('better-sqlite3');

const [db_path, cmd, ...args] = process.argv.slice(2);
const db = new Database(db_path, { timeout: 30000 });
db.pragma('busy_timeout = 30000');

function out(x) { process.stdout.write(JSON.stringify(x) + '\n'); }

const now = () => Math.floor(Date.now() / 1000);

if (cmd === 'put') {
  const [scope, key, json, node] = args;
  db.prepare(`INSERT INTO mesh_memory (scope, key, value, node_id, updated_at)
              VALUES (?, ?, ?, ?, ?)
              ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value,
                node_id = excluded.node_id, updated_at = excluded.updated_at`)
    .run(scope, key, JSON.stringify(JSON.parse(json)), node, now());
  out({ ok: true });
} else if (cmd === 'put-value') {
  // The seed client's putMemory: a string value is stored as its raw text
  // (`hello mesh`, not `"hello mesh"`), anything else as JSON.
  const [scope, key, json, node] = args;
  const value = JSON.parse(json);
  db.prepare(`INSERT INTO mesh_memory (scope, key, value, node_id, updated_at)
              VALUES (?, ?, ?, ?, ?)
              ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value,
                node_id = excluded.node_id, updated_at = excluded.updated_at`)
    .run(scope, key, typeof value === 'string' ? value : JSON.stringify(value), node, now());
  out({ ok: true });
} else if (cmd === 'get') {
  // The seed client's getMemory: the value as JSON when it parses, else its text.
  const [scope, key] = args;
  const row = db.prepare('SELECT value, node_id, updated_at FROM mesh_memory WHERE scope = ? AND key = ?').get(scope, key);
  let value = null;
  if (row) { try { value = JSON.parse(row.value); } catch (e) { value = row.value; } }
  out(row ? { value, raw: row.value, node_id: row.node_id, updated_at: row.updated_at } : null);
} else if (cmd === 'list') {
  const [scope] = args;
  out(db.prepare('SELECT key FROM mesh_memory WHERE scope = ? ORDER BY key').all(scope).map(r => r.key));
} else if (cmd === 'search') {
  const [query] = args;
  out(db.prepare('SELECT scope, key FROM mesh_memory_fts WHERE mesh_memory_fts MATCH ? ORDER BY key').all(query));
} else if (cmd === 'delete') {
  const [scope, key] = args;
  out({ changes: db.prepare('DELETE FROM mesh_memory WHERE scope = ? AND key = ?').run(scope, key).changes });
} else if (cmd === 'put-skill') {
  const [name, content, node] = args;
  db.prepare(`INSERT INTO mesh_skills (name, source_node, content, updated_at) VALUES (?, ?, ?, ?)
              ON CONFLICT(name) DO UPDATE SET source_node = excluded.source_node,
                content = excluded.content, updated_at = excluded.updated_at`)
    .run(name, node, content, now());
  out({ ok: true });
} else {
  out({ error: 'unknown command ' + cmd });
  process.exit(2);
}
db.close();

// The real Better Auth, as a frontend would run it, for tests/test_better_auth.py.
//
// Environment: DATABASE_URL (a Postgres database of its own), BETTER_AUTH_SECRET
// and PORT. Better Auth's own migrations create its tables there first; then the
// server listens on 127.0.0.1:PORT and prints one line, "ready <base URL>".
import { createServer } from "node:http";

import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { bearer } from "better-auth/plugins";
import pg from "pg";

const { DATABASE_URL, BETTER_AUTH_SECRET, PORT } = process.env;
if (!DATABASE_URL || !BETTER_AUTH_SECRET || !PORT) {
  console.error("DATABASE_URL, BETTER_AUTH_SECRET and PORT are required");
  process.exit(2);
}
const baseURL = `http://127.0.0.1:${PORT}`;

const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 4 });
const options = {
  baseURL,
  secret: BETTER_AUTH_SECRET,
  database: pool,
  emailAndPassword: { enabled: true },
  plugins: [bearer()],
  telemetry: { enabled: false },
};

const { runMigrations } = await getMigrations(options);
await runMigrations();

const auth = betterAuth(options);
const server = createServer(toNodeHandler(auth));
server.listen(Number(PORT), "127.0.0.1", () => {
  console.log(`ready ${baseURL}`);
});

function shutDown() {
  server.close();
  pool.end().finally(() => process.exit(0));
}
process.on("SIGTERM", shutDown);
process.on("SIGINT", shutDown);

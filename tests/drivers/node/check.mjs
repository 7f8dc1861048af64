// node-postgres (`pg`) and postgres.js (`postgres`) driven through pgsluice, one scenario per run.
//
//   node tests/drivers/node/check.mjs postgres://user:password@host:port/db[?sslmode=require] SCENARIO
//
// sslmode=require (the TLS pass, PGSLUICE_TEST_TLS=1) has libpq's meaning for both drivers: encrypted,
// the certificate not checked.
//
// On success prints one JSON object (the values the scenario saw) as the last line of stdout and
// exits 0; on a wrong value or any driver error prints the error (with its SQLSTATE) to stderr and
// exits 1; exits 3 if the scenario has not finished after CHECK_TIMEOUT_MS (default 60 s).
// tests/integration/test_drivers_jvm_node.py runs it (after tests/drivers/install.sh) and checks
// the JSON. Tables node_tx and postgres_tx are created empty by the test beforehand; the coalesce
// scenarios read table coalesce_items (id 1..1000, v = 'value-' || id), made by test_coalesce.py.
//
// What the scenarios exercise in a transaction-mode proxy (DESIGN §2):
//   pg-prepared          {name, text, values}: Parse once per client, then Bind/Execute/Sync only
//   pg-pipeline          Promise.all on one client, queued (default) and truly pipelined
//                        (`pipeline: true`: many Syncs outstanding at once, one of them failing)
//   pg-pool              pg.Pool of 20 clients, the same statement name on all of them
//   pg-portal            the `rows` option: Execute with a row limit + Flush, no Sync until done
//   pg-transaction       BEGIN/COMMIT and BEGIN/ROLLBACK
//   pg-error             22012 in the simple and the extended protocol and in a transaction, the
//                        client usable after each
//   pg-listen            LISTEN/NOTIFY (session mode only: not transparent in transaction mode)
//   postgres-prepared    postgres.js's default `prepare: true`: Parse + Describe('S') + Flush,
//                        then Bind/Execute/Sync of the named statement, reused many times
//   postgres-ddl-moved   a column added under a prepared `select *`, the statement then parsed
//                        afresh on another server connection (transaction and statement mode)
//   postgres-ddl-retyped as postgres-ddl-moved, but a column's type and name change, not their count
//   postgres-ddl-shared  twelve clients sharing server connections prepare a `select *`, a column
//                        is added, a new client prepares it where a stale copy is cached
//   postgres-begin       sql.begin (commit, rollback on a thrown error, a savepoint)
//   postgres-concurrent  max: 10 connections, 200 queries at once (pipelined per connection)
//   postgres-cursor      .cursor(10): Execute with a row limit + Flush outside any transaction
//   pg-coalesce          40 clients at once, each running one named lookup ({name, text, values})
//                        25 times on keys 1..50: what a coalescing pgsluice merges (issue 15)
//   postgres-coalesce    10 connections, 40 lookups each sent at once without awaiting (pipelined
//                        named statements), on keys 1..50 (issue 15)

import assert from 'node:assert/strict'
import pg from 'pg'
import postgres from 'postgres'

const [url, scenario] = process.argv.slice(2)
if (!url || !scenario) {
  console.error('usage: node check.mjs postgres://user:password@host:port/db SCENARIO')
  process.exit(2)
}

// pg-connection-string reads sslmode=require as verify-full unless asked for libpq's meanings;
// postgres.js reads it as libpq does.
const pgUrl = withLibpqSslModes(url)

function withLibpqSslModes(connectionString) {
  const parsed = new URL(connectionString)
  if (!parsed.searchParams.has('sslmode')) return connectionString
  parsed.searchParams.set('uselibpqcompat', 'true')
  return parsed.toString()
}

const timeoutMs = Number(process.env.CHECK_TIMEOUT_MS || 60000)
const watchdog = setTimeout(() => {
  console.error(`FAILED ${scenario}: not finished after ${timeoutMs} ms`)
  process.exit(3)
}, timeoutMs)

function pgClient(extra = {}) {
  return new pg.Client({ connectionString: pgUrl, application_name: `check-${scenario}`, ...extra })
}

function postgresSql(extra = {}) {
  return postgres(url, {
    max: 1,
    onnotice: () => {},
    connection: { application_name: `check-${scenario}` },
    connect_timeout: 10,
    ...extra,
  })
}

// Runs fn(client) on a connected pg.Client and always ends the client.
async function withClient(fn, extra = {}) {
  const client = pgClient(extra)
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

async function expectError(promise, sqlstate, what) {
  try {
    await promise
  } catch (err) {
    assert.equal(err.code, sqlstate, `${what}: ${err.message}`)
    return err.message
  }
  throw new assert.AssertionError({ message: `${what}: no error, expected ${sqlstate}` })
}

// Ends every other server connection of this user and database and waits until they are gone, so
// that the next statement of a pooled client lands on a server connection opened afresh. One simple
// query, so that both statements run on the same server connection in every pool mode.
async function terminateOtherServerConnections(admin) {
  const [, [{ pids }]] = await admin.unsafe(
    "deallocate all; select coalesce(array_agg(pid), '{}')::text as pids from (select pid, " +
      'pg_terminate_backend(pid) from pg_stat_activity where usename = current_user and ' +
      "datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend') t",
  )
  for (let waited = 0; ; waited += 50) {
    const [{ n }] = await admin.unsafe(`select count(*)::int as n from pg_stat_activity where pid = any('${pids}'::int[])`)
    if (n === 0) break
    assert.ok(waited < 20000, `terminated server connections ${pids} gone`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

// A deterministic stream of lookup keys in 1..50 (several clients ask for the same key at once).
function keysFrom(seed) {
  let state = seed + 1 // MINSTD: exact in doubles, never 0 for 0 < state < 2^31 - 1
  return () => {
    state = (state * 48271) % 2147483647
    return 1 + (state % 50)
  }
}

function assertLookupRow(rows, id, what) {
  assert.deepEqual(rows.map((row) => ({ ...row })), [{ id, v: `value-${id}` }], what)
}

const scenarios = {
  // With enableChannelBinding, node-postgres selects SCRAM-SHA-256-PLUS when it is offered (over TLS)
  // and binds to the hash of the certificate it saw, computed by itself (not libpq's code).
  async 'pg-channel-binding'() {
    return withClient(
      async (client) => {
        const r = await client.query("select 'bound' as word, $1::int + 1 as n", [41])
        return { word: r.rows[0].word, n: r.rows[0].n, tls: Boolean(client.connection.stream.getPeerCertificate) }
      },
      { enableChannelBinding: true },
    )
  },

  async 'pg-prepared'() {
    return withClient(async (client) => {
      const pids = new Set()
      for (let i = 0; i < 20; i++) {
        const r = await client.query({
          name: 'double_it',
          text: 'select $1::int * 2 as doubled, $2::text as label, pg_backend_pid() as pid',
          values: [i, `v-é-${i}`],
        })
        assert.deepEqual([r.rows[0].doubled, r.rows[0].label], [2 * i, `v-é-${i}`], `run ${i}`)
        pids.add(r.rows[0].pid)
        // A second named statement and an unnamed one in between, so the names interleave.
        const o = await client.query({ name: 'concat_it', text: 'select $1::text || $2::text as c', values: ['a', i] })
        assert.equal(o.rows[0].c, `a${i}`)
        const u = await client.query('select $1::int + 1 as n', [i])
        assert.equal(u.rows[0].n, i + 1)
      }
      return {
        executions: 20,
        parsed: Object.keys(client.connection.parsedStatements).sort(),
        distinct_backends: pids.size,
      }
    })
  },

  async 'pg-pipeline'() {
    const queued = await withClient(async (client) => {
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          i % 2
            ? client.query({ name: 'pipe_named', text: 'select $1::int as n', values: [i] })
            : client.query('select $1::int as n', [i]),
        ),
      )
      return results.map((r) => r.rows[0].n)
    })
    assert.deepEqual(queued, Array.from({ length: 50 }, (_, i) => i))

    // pipeline: true writes every query at once; query 25 fails and only it may fail.
    const pipelined = await withClient(
      async (client) => {
        const settled = await Promise.allSettled(
          Array.from({ length: 50 }, (_, i) =>
            i === 25
              ? client.query('select 1 / $1::int as n', [0])
              : i % 2
              ? client.query({ name: 'pipe_named', text: 'select $1::int as n', values: [i] })
              : client.query('select $1::int as n', [i]),
          ),
        )
        const after = await client.query('select 42 as n')
        return { settled, after: after.rows[0].n }
      },
      { pipeline: true },
    )
    const values = pipelined.settled.map((s, i) => {
      if (i === 25) {
        assert.equal(s.status, 'rejected', 'query 25 must fail')
        assert.equal(s.reason.code, '22012', s.reason.message)
        return s.reason.code
      }
      assert.equal(s.status, 'fulfilled', `query ${i}: ${s.reason && s.reason.message}`)
      return s.value.rows[0].n
    })
    assert.deepEqual(values, Array.from({ length: 50 }, (_, i) => (i === 25 ? '22012' : i)))
    assert.equal(pipelined.after, 42)
    return { queued: queued.length, pipelined: values.length, pipelined_error: values[25], after: pipelined.after }
  },

  async 'pg-pool'() {
    const pool = new pg.Pool({ connectionString: pgUrl, max: 20, application_name: 'check-pg-pool' })
    const workers = 20
    const perWorker = 50
    try {
      const backends = new Set()
      let mostBackendsOfOneClient = 0
      // Every worker holds its own pool client before any starts querying, so a client released
      // early is never handed to a second worker.
      let connected = 0
      let allConnected
      const everyoneConnected = new Promise((resolve) => (allConnected = resolve))
      const sums = await Promise.all(
        Array.from({ length: workers }, async (_, w) => {
          const client = await pool.connect()
          if (++connected === workers) allConnected()
          await everyoneConnected
          const seen = new Set()
          try {
            let sum = 0
            for (let i = 0; i < perWorker; i++) {
              const text = 'select $1::int * 1000 + $2::int as v, pg_backend_pid() as pid'
              const r =
                i % 5 === 4
                  ? await client.query(text, [w, i])
                  : await client.query({ name: 'pool_stmt', text, values: [w, i] })
              assert.equal(r.rows[0].v, w * 1000 + i, `worker ${w} query ${i}`)
              sum += r.rows[0].v
              seen.add(r.rows[0].pid)
              backends.add(r.rows[0].pid)
            }
            mostBackendsOfOneClient = Math.max(mostBackendsOfOneClient, seen.size)
            return sum
          } finally {
            client.release()
          }
        }),
      )
      const total = sums.reduce((a, b) => a + b, 0)
      return {
        workers,
        queries: workers * perWorker,
        total,
        clients_opened: pool.totalCount,
        // 20 and 1 when each client has a server connection of its own
        distinct_backends: backends.size,
        most_backends_of_one_client: mostBackendsOfOneClient,
      }
    } finally {
      await pool.end()
    }
  },

  async 'pg-portal'() {
    return withClient(async (client) => {
      const text = 'select g, md5(g::text) as h from generate_series(1, 1000) g order by g'
      const outside = await client.query({ text, rows: 10 })
      await client.query('begin')
      const inside = await client.query({ text, rows: 10 })
      await client.query('commit')
      const check = (r) => {
        assert.equal(r.rows.length, 1000)
        assert.equal(r.rows.reduce((a, row) => a + row.g, 0), 500500)
      }
      check(outside)
      check(inside)
      return { rows_outside: outside.rows.length, rows_inside: inside.rows.length, md5_500: outside.rows[499].h }
    })
  },

  async 'pg-transaction'() {
    return withClient(async (client) => {
      const other = pgClient()
      await other.connect()
      try {
        const note = async (c, id) =>
          (await c.query('select note from node_tx where id = $1', [id])).rows[0]?.note ?? null
        const insert = (id, note) =>
          client.query({ name: 'ins', text: 'insert into node_tx (id, note) values ($1, $2)', values: [id, note] })
        await client.query('BEGIN')
        await insert(1, 'committed')
        assert.equal(await note(client, 1), 'committed')
        assert.equal(await note(other, 1), null, 'uncommitted row invisible to another client')
        await client.query('COMMIT')
        assert.equal(await note(other, 1), 'committed')

        await client.query('BEGIN')
        await insert(2, 'rolled back')
        assert.equal(await note(client, 2), 'rolled back')
        await client.query('ROLLBACK')
        assert.equal(await note(client, 2), null)
        const rows = await client.query("select string_agg(id || '=' || note, ',' order by id) as s from node_tx")
        return { rows: rows.rows[0].s }
      } finally {
        await other.end()
      }
    })
  },

  async 'pg-error'() {
    return withClient(async (client) => {
      const simple = await expectError(client.query('select 1/0'), '22012', 'simple protocol')
      assert.equal((await client.query('select 1 as ok')).rows[0].ok, 1)

      await expectError(client.query('select $1::int / 0', [5]), '22012', 'extended protocol')
      assert.equal((await client.query('select $1::text as ok', ['yes'])).rows[0].ok, 'yes')

      const div = (d) => client.query({ name: 'div', text: 'select 10 / $1::int as q', values: [d] })
      await expectError(div(0), '22012', 'named statement')
      assert.equal((await div(2)).rows[0].q, 5)
      await expectError(div(0), '22012', 'named statement again')
      assert.equal((await div(5)).rows[0].q, 2)

      await client.query('begin')
      await expectError(client.query('select 1/0'), '22012', 'in a transaction')
      await expectError(client.query('select 1'), '25P02', 'after an error in a transaction')
      await client.query('rollback')
      const after = (await client.query("select 'after' as s")).rows[0].s
      return { simple_message: simple, after }
    })
  },

  async 'pg-listen'() {
    const listener = pgClient()
    await listener.connect()
    try {
      const received = new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no notification within 10 s')), 10000)
        listener.on('notification', (msg) => {
          clearTimeout(t)
          resolve(msg)
        })
      })
      await listener.query('LISTEN check_channel')
      await withClient((notifier) => notifier.query("select pg_notify('check_channel', 'hello from node')"))
      const msg = await received
      return { channel: msg.channel, payload: msg.payload }
    } finally {
      await listener.end()
    }
  },

  async 'postgres-prepared'() {
    const sql = postgresSql({ max: 1 })
    try {
      const names = new Set()
      for (let i = 0; i < 50; i++) {
        const r = await sql`select ${i}::int * 2 as doubled, ${'p-é-' + i}::text as label`
        assert.deepEqual([r[0].doubled, r[0].label], [2 * i, `p-é-${i}`], `run ${i}`)
        names.add(r.statement.name)
        const o = await sql`select ${i}::int + 1 as n`
        assert.equal(o[0].n, i + 1)
        names.add(o.statement.name)
      }
      // 50 more at once on the one connection: postgres.js pipelines them.
      const burst = await Promise.all(
        Array.from({ length: 50 }, (_, i) => sql`select ${i}::int * 2 as doubled, ${'b' + i}::text as label`),
      )
      burst.forEach((r, i) => assert.deepEqual([r[0].doubled, r[0].label], [2 * i, `b${i}`]))
      names.add(burst[0].statement.name)
      return { executions: 150, statement_names: [...names].sort() }
    } finally {
      await sql.end({ timeout: 5 })
    }
  },

  async 'postgres-ddl-moved'() {
    // A column is added under a prepared `select *`, then every server connection that had the
    // statement is gone, so the next Bind lands where pgsluice parses the text afresh, with three
    // columns. postgres.js binds with no result formats and reads rows with the two columns it was
    // told of: it must get the stale-plan error it retries on, never rows of the new shape.
    const sql = postgresSql({ max: 1 })
    const admin = postgresSql({ max: 1 })
    try {
      const widths = []
      for (let round = 0; round < 2; round++) {
        for (let i = 0; i < 5; i++) {
          const [row] = await sql`select * from postgres_ddl where id = ${1}`
          const width = Object.keys(row).length
          assert.equal(width, 2 + round, `columns in round ${round} run ${i}: ${JSON.stringify(row)}`)
          if (round === 1) assert.equal(row.b, 7, 'the new column')
          if (i === 4) widths.push(width)
        }
        if (round > 0) continue
        await admin.unsafe('alter table postgres_ddl add column b int default 7')
        await terminateOtherServerConnections(admin)
      }
      return { widths }
    } finally {
      await sql.end({ timeout: 5 })
      await admin.end({ timeout: 5 })
    }
  },

  async 'postgres-ddl-retyped'() {
    // As postgres-ddl-moved, but the DDL keeps the number of columns: the second becomes an int and
    // is renamed. Read with the columns it was told of, a row would still have the key `a` holding
    // the string '3'; the client must get the stale-plan error, re-prepare, and read `n`: 3.
    const sql = postgresSql({ max: 1 })
    const admin = postgresSql({ max: 1 })
    try {
      const seen = []
      for (let round = 0; round < 2; round++) {
        for (let i = 0; i < 5; i++) {
          const [row] = await sql`select * from postgres_ddl where id = ${1}`
          const expected = round === 0 ? { id: 1, a: 'one' } : { id: 1, n: 3 }
          assert.deepEqual({ ...row }, expected, `round ${round} run ${i}`)
          if (i === 4) seen.push(Object.keys(row).join(','))
        }
        if (round > 0) continue
        await admin.unsafe('alter table postgres_ddl alter column a type int using length(a)')
        await admin.unsafe('alter table postgres_ddl rename column a to n')
        await terminateOtherServerConnections(admin)
      }
      return { columns: seen }
    } finally {
      await sql.end({ timeout: 5 })
      await admin.end({ timeout: 5 })
    }
  },

  async 'postgres-ddl-shared'() {
    // Twelve clients prepare the same `select *` at once, so every server connection they use has it;
    // then a column is added. A new client (a service instance started after the migration) prepares
    // and describes the text on a connection whose copy is stale: it must get today's three columns,
    // not the stale-plan error a fresh Parse never gets (postgres.js retries only statements it had
    // prepared). Then each old client's next run meets a stale copy, gets the stale-plan error,
    // re-prepares once and runs again, wherever that lands.
    const clients = Array.from({ length: 12 }, () => postgresSql({ max: 1 }))
    const newcomer = postgresSql({ max: 1 })
    const admin = postgresSql({ max: 1 })
    const width = async (sql, expected, what) => {
      const [row] = await sql`select * from postgres_ddl where id = ${1}`.catch((err) => {
        err.message = `${what}: ${err.message}`
        throw err
      })
      assert.equal(Object.keys(row).length, expected, `${what}: ${JSON.stringify(row)}`)
      if (expected === 3) assert.equal(row.b, 7, `${what}: the new column`)
    }
    try {
      for (let i = 0; i < 5; i++) await Promise.all(clients.map((sql, c) => width(sql, 2, `client ${c} run ${i}`)))
      await admin.unsafe('alter table postgres_ddl add column b int default 7')
      await width(newcomer, 3, 'a client new after the DDL')
      for (let i = 0; i < 5; i++) {
        await Promise.all(clients.map((sql, c) => width(sql, 3, `client ${c} run ${i} after the DDL`)))
      }
      return { clients: clients.length }
    } finally {
      await Promise.all([...clients, newcomer, admin].map((sql) => sql.end({ timeout: 5 })))
    }
  },

  async 'postgres-begin'() {
    const sql = postgresSql({ max: 2 })
    try {
      const inside = await sql.begin(async (tx) => {
        await tx`insert into postgres_tx (id, note) values (${1}, ${'committed'})`
        const [row] = await tx`select note from postgres_tx where id = ${1}`
        await tx.savepoint(async (sp) => {
          await sp`insert into postgres_tx (id, note) values (${3}, ${'savepoint'})`
        })
        await tx
          .savepoint(async (sp) => {
            await sp`insert into postgres_tx (id, note) values (${4}, ${'rolled back savepoint'})`
            throw new Error('undo savepoint')
          })
          .catch((err) => assert.equal(err.message, 'undo savepoint'))
        return row.note
      })
      assert.equal(inside, 'committed')

      await assert.rejects(
        sql.begin(async (tx) => {
          await tx`insert into postgres_tx (id, note) values (${2}, ${'rolled back'})`
          const [row] = await tx`select count(*)::int as n from postgres_tx`
          assert.equal(row.n, 3)
          throw new Error('roll it back')
        }),
        /roll it back/,
      )
      const [{ s }] = await sql`select string_agg(id || '=' || note, ',' order by id) as s from postgres_tx`
      return { inside, rows: s }
    } finally {
      await sql.end({ timeout: 5 })
    }
  },

  async 'postgres-concurrent'() {
    const sql = postgresSql({ max: 10 })
    try {
      const n = 200
      const results = await Promise.all(
        Array.from({ length: n }, (_, i) =>
          i % 2
            ? sql`select ${i}::int * 3 as v, pg_backend_pid() as pid`
            : sql`select ${i}::int * 3 as v, ${'x'}::text as x, pg_backend_pid() as pid`,
        ),
      )
      results.forEach((r, i) => assert.equal(r[0].v, 3 * i, `query ${i}`))
      const total = results.reduce((a, r) => a + r[0].v, 0)
      const backends = new Set(results.map((r) => r[0].pid)).size
      return { queries: n, total, distinct_backends: backends }
    } finally {
      await sql.end({ timeout: 5 })
    }
  },

  async 'postgres-cursor'() {
    const sql = postgresSql({ max: 4 })
    try {
      let rows = 0
      let sum = 0
      let batches = 0
      // Other queries on the other connections while the cursor's portal is open.
      const side = Promise.all(Array.from({ length: 30 }, (_, i) => sql`select ${i}::int as n`))
      for await (const batch of sql`select g from generate_series(1, 1000) g order by g`.cursor(10)) {
        batches++
        for (const row of batch) {
          rows++
          assert.equal(row.g, rows)
          sum += row.g
        }
      }
      const sideRows = (await side).map((r) => r[0].n)
      assert.deepEqual(sideRows, Array.from({ length: 30 }, (_, i) => i))
      const [{ ok }] = await sql`select 'ok' as ok`
      return { rows, sum, batches, side_queries: sideRows.length, after: ok }
    } finally {
      await sql.end({ timeout: 5 })
    }
  },

  async 'pg-coalesce'() {
    const clients = Array.from({ length: 40 }, () => pgClient())
    await Promise.all(clients.map((client) => client.connect()))
    const perClient = 25
    try {
      const rows = await Promise.all(
        clients.map(async (client, c) => {
          const nextKey = keysFrom(c)
          for (let i = 0; i < perClient; i++) {
            const id = nextKey()
            const r = await client.query({
              name: 'coalesce_lookup',
              text: 'select id, v from coalesce_items where id = $1',
              values: [id],
            })
            assertLookupRow(r.rows, id, `client ${c} lookup ${i} of key ${id}`)
          }
          return perClient
        }),
      )
      return { clients: clients.length, requests: rows.reduce((a, b) => a + b, 0) }
    } finally {
      await Promise.all(clients.map((client) => client.end()))
    }
  },

  async 'postgres-coalesce'() {
    const connections = Array.from({ length: 10 }, () => postgresSql({ max: 1 }))
    const perConnection = 40
    try {
      // Every lookup is sent before any answer is awaited: each connection pipelines its 40.
      const rows = await Promise.all(
        connections.flatMap((sql, c) => {
          const nextKey = keysFrom(100 + c)
          return Array.from({ length: perConnection }, (_, i) => {
            const id = nextKey()
            return sql`select id, v from coalesce_items where id = ${id}`.then((r) => {
              assertLookupRow(r, id, `connection ${c} lookup ${i} of key ${id}`)
              return r.statement.name
            })
          })
        }),
      )
      return { connections: connections.length, requests: rows.length, named: rows.every(Boolean) }
    } finally {
      await Promise.all(connections.map((sql) => sql.end({ timeout: 5 })))
    }
  },
}

const run = scenarios[scenario]
if (!run) {
  console.error(`unknown scenario ${scenario}; known: ${Object.keys(scenarios).join(' ')}`)
  process.exit(2)
}

try {
  const result = await run()
  console.log(JSON.stringify({ scenario, ...result }))
  clearTimeout(watchdog)
  process.exit(0)
} catch (err) {
  const code = err && err.code ? ` [SQLSTATE ${err.code}]` : ''
  console.error(`FAILED ${scenario}: ${err && err.message}${code}`)
  console.error(err && err.stack)
  process.exit(1)
}

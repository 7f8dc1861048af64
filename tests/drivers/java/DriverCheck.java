// pgjdbc (Debian's libpostgresql-jdbc-java) driven through pgsluice, one scenario per run.
//
//   javac -cp /usr/share/java/postgresql.jar -d OUT DriverCheck.java
//   java -cp /usr/share/java/postgresql.jar:OUT DriverCheck JDBC_URL USER PASSWORD SCENARIO
//
// Scenarios: prepared, reprepare, deallocate, ddl, ddl-moved, batch, transaction, fetch, types, many,
// timeout, coalesce
// (see the method of each name).
// On success prints one JSON object (the values the scenario saw) as the last line of stdout and
// exits 0; on a wrong value or any exception prints the stack trace (with the SQLSTATE) to stderr
// and exits 1. tests/integration/test_drivers_jvm_node.py runs it and checks the JSON.
//
// What each scenario exercises in a transaction-mode proxy (DESIGN §2):
//   prepared     pgjdbc's switch from the unnamed statement to a named server-side one (S_n)
//                after prepareThreshold (5) executions, then Bind-only round trips of that name
//   reprepare    with the driver's statement cache off, closing a server-prepared statement queues
//                a Close('S') that goes out in front of the next statement's Parse
//   deallocate   SQL DEALLOCATE ALL / DISCARD ALL from the client: the driver forgets its S_n and
//                Parses the same names again, which must not meet "already exists" (42P05)
//   ddl          a column added under a server-prepared `select *`: "cached plan must not change
//                result type" (0A000), which the driver heals by re-preparing in autocommit
//   ddl-moved    the same, but every server connection that had the statement is gone before the
//                second round (transaction and statement mode only): the text is parsed afresh
//                with three columns while the driver binds two result formats
//   batch        100 Parse/Bind/Execute groups in one pipeline with a single Sync
//   transaction  BEGIN sent lazily in the same pipeline as the first statement; COMMIT/ROLLBACK
//   fetch        a named portal read 10 rows at a time (Execute with a row limit, PortalSuspended)
//                with another statement run on the same connection while the portal is open
//   types        binary and text transfer of timestamptz/numeric/uuid/bytea/arrays, and the
//                client's TimeZone startup parameter on whatever server connection serves it
//   many         20 connections doing `prepared` at once, all naming their statement S_1 for the
//                same SQL, so a server connection sees the same name from many clients
//   timeout      setQueryTimeout: the driver's CancelRequest with the key pgsluice gave it
//   coalesce     20 connections running one lookup PreparedStatement at once, past prepareThreshold,
//                on keys several of them ask for at the same time: what a coalescing pgsluice merges
//                into shared and batched executions (issue 15; the test makes table coalesce_items)

import java.math.BigDecimal;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;

public final class DriverCheck {
    private final String url;
    private final Properties props = new Properties();

    private DriverCheck(String url, String user, String password) {
        this.url = url;
        props.setProperty("user", user);
        if (!password.isEmpty()) {
            props.setProperty("password", password);
        }
    }

    public static void main(String[] args) {
        if (args.length != 4) {
            System.err.println("usage: DriverCheck JDBC_URL USER PASSWORD SCENARIO");
            System.exit(2);
        }
        DriverCheck check = new DriverCheck(args[0], args[1], args[2]);
        try {
            Map<String, Object> result = check.run(args[3]);
            result.put("scenario", args[3]);
            result.put("driver", org.postgresql.util.DriverInfo.DRIVER_FULL_NAME);
            System.out.println(Json.of(result));
            System.exit(0);
        } catch (Throwable e) {
            System.err.println("FAILED " + args[3] + ": " + describe(e));
            e.printStackTrace();
            System.exit(1);
        }
    }

    private Map<String, Object> run(String scenario) throws Exception {
        switch (scenario) {
            case "prepared": return prepared(0, null);
            case "reprepare": return reprepare();
            case "batch": return batch();
            case "transaction": return transaction();
            case "fetch": return fetch();
            case "types": return types();
            case "many": return many();
            case "timeout": return timeout();
            case "deallocate": return deallocate();
            case "ddl": return ddl(false);
            case "ddl-moved": return ddl(true);
            case "ddl-retyped-moved": return ddlRetyped();
            case "listen": return listen();
            case "coalesce": return coalesce();
            default: throw new IllegalArgumentException("unknown scenario " + scenario);
        }
    }

    private Connection connect() throws SQLException {
        return DriverManager.getConnection(url, props);
    }

    /**
     * LISTEN through pgjdbc (the extended protocol), a NOTIFY from another connection received while
     * the listener is idle (getNotifications waits on its socket), its own NOTIFY received before
     * the statement returns, then UNLISTEN: a later NOTIFY is not received.
     */
    private Map<String, Object> listen() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection listener = connect(); Connection notifier = connect();
             Statement ls = listener.createStatement(); Statement ns = notifier.createStatement()) {
            PGConnection pg = listener.unwrap(PGConnection.class);
            ls.execute("LISTEN jdbc_channel");
            ns.execute("NOTIFY jdbc_channel, 'from-other'");
            List<String> payloads = new ArrayList<>();
            long deadline = System.currentTimeMillis() + 10_000;
            while (payloads.isEmpty() && System.currentTimeMillis() < deadline) {
                PGNotification[] got = pg.getNotifications(500);
                if (got != null) {
                    for (PGNotification n : got) payloads.add(n.getName() + ":" + n.getParameter());
                }
            }
            ls.execute("NOTIFY jdbc_channel, 'own'");
            PGNotification[] own = pg.getNotifications();  // no wait: it came before the statement's end
            if (own != null) {
                for (PGNotification n : own) payloads.add(n.getName() + ":" + n.getParameter());
            }
            ls.execute("UNLISTEN jdbc_channel");
            ns.execute("NOTIFY jdbc_channel, 'after-unlisten'");
            PGNotification[] late = pg.getNotifications(1000);
            if (late != null) {
                for (PGNotification n : late) payloads.add(n.getName() + ":" + n.getParameter());
            }
            out.put("payloads", payloads);
        }
        return out;
    }

    /**
     * One PreparedStatement executed 20 times in autocommit; the driver names it after 5 runs.
     * With `connected`, waits after connecting until every worker has connected, so all of them
     * hold a client connection at once.
     */
    private Map<String, Object> prepared(int worker, CountDownLatch connected) throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect();
             PreparedStatement ps = conn.prepareStatement(
                     "select ?::int4 * 2 as doubled, ? || ':' || ?::int4 as label, pg_backend_pid() as pid")) {
            if (connected != null) {
                connected.countDown();
                expect(connected.await(60, TimeUnit.SECONDS), true, "all workers connected");
            }
            expect(conn.getAutoCommit(), true, "autocommit");
            int threshold = ps.unwrap(PGStatement.class).getPrepareThreshold();
            List<Object> pids = new ArrayList<>();
            int executions = 0;
            for (int i = 0; i < 20; i++) {
                int n = worker * 1000 + i;
                String text = "w" + worker + "-é-" + i;  // non-ASCII: client_encoding must be UTF8
                ps.setInt(1, n);
                ps.setString(2, text);
                ps.setInt(3, i);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), true, "row " + i);
                    expect(rs.getInt("doubled"), 2 * n, "doubled " + i);
                    expect(rs.getString("label"), text + ":" + i, "label " + i);
                    int pid = rs.getInt("pid");
                    if (!pids.contains(pid)) {
                        pids.add(pid);
                    }
                    expect(rs.next(), false, "one row " + i);
                }
                executions++;
            }
            out.put("executions", executions);
            out.put("prepare_threshold", threshold);
            // true once the driver uses a named server-side statement instead of the unnamed one
            out.put("server_prepared", ps.unwrap(PGStatement.class).isUseServerPrepare());
            out.put("backends", pids);
        }
        return out;
    }

    /**
     * With preparedStatementCacheQueries=0, closing a server-prepared PreparedStatement makes the
     * driver send Close('S', S_n) ahead of the next query; the same SQL prepared again gets a new name.
     */
    private Map<String, Object> reprepare() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        Properties noCache = new Properties();
        noCache.putAll(props);
        noCache.setProperty("preparedStatementCacheQueries", "0");
        String sql = "select ?::int4 + 100 as n";
        try (Connection conn = DriverManager.getConnection(url, noCache)) {
            int executions = 0;
            for (int round = 0; round < 3; round++) {
                try (PreparedStatement ps = conn.prepareStatement(sql)) {
                    for (int i = 0; i < 7; i++) {
                        ps.setInt(1, round * 10 + i);
                        try (ResultSet rs = ps.executeQuery()) {
                            expect(rs.next(), true, "row");
                            expect(rs.getInt(1), round * 10 + i + 100, "round " + round + " run " + i);
                        }
                        executions++;
                    }
                    expect(ps.unwrap(PGStatement.class).isUseServerPrepare(), true, "server prepared " + round);
                }
            }
            // The Close of round 2's statement goes out with this query.
            try (PreparedStatement st = conn.prepareStatement(
                    "select count(*) from pg_prepared_statements where statement = ?")) {
                st.setString(1, sql.replace("?", "$1"));
                try (ResultSet rs = st.executeQuery()) {
                    rs.next();
                    out.put("prepared_statements_left", rs.getInt(1));
                }
            }
            out.put("executions", executions);
        }
        return out;
    }

    /** A server-prepared statement, then DEALLOCATE ALL and DISCARD ALL, then the statement again. */
    private Map<String, Object> deallocate() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect();
             PreparedStatement ps = conn.prepareStatement("select ?::int4 * 3 as n")) {
            int executions = 0;
            List<Object> commands = new ArrayList<>();
            for (String reset : new String[] {"DEALLOCATE ALL", "DISCARD ALL", null}) {
                for (int i = 0; i < 7; i++) {
                    ps.setInt(1, executions);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), true, "row");
                        expect(rs.getInt(1), executions * 3, "after " + commands + " run " + i);
                    }
                    executions++;
                }
                expect(ps.unwrap(PGStatement.class).isUseServerPrepare(), true, "server prepared");
                if (reset != null) {
                    try (Statement st = conn.createStatement()) {
                        st.execute(reset);
                    }
                    commands.add(reset);
                }
            }
            out.put("executions", executions);
            out.put("resets", commands);
        }
        return out;
    }

    /**
     * `select *` server-prepared on jdbc_ddl (made by the test), a column added, then run again.
     * With `moved`, after the ALTER the admin connection's server connection forgets its statements
     * and terminates every other server connection of this user, so the second round is served by a
     * server connection that parses the text after the column was added.
     */
    private Map<String, Object> ddl(boolean moved) throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect(); Connection admin = connect();
             PreparedStatement ps = conn.prepareStatement("select * from jdbc_ddl where id = ?")) {
            List<Object> widths = new ArrayList<>();
            for (int round = 0; round < 2; round++) {
                for (int i = 0; i < 7; i++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), true, "row");
                        int width = rs.getMetaData().getColumnCount();
                        expect(width, 2 + round, "columns in round " + round + " run " + i);
                        if (round == 1) {
                            expect(rs.getInt("b"), 7, "new column");
                        }
                        if (i == 6) {
                            widths.add(width);
                        }
                    }
                }
                if (round == 0) {
                    try (Statement st = admin.createStatement()) {
                        st.execute("alter table jdbc_ddl add column b int default 7");
                        if (moved) {
                            moveAway(st);
                        }
                    }
                }
            }
            out.put("widths", widths);
        }
        return out;
    }

    /**
     * As ddl with `moved`, but the DDL keeps the number of columns: the second becomes an int and is
     * renamed. Read with the fields the driver cached, a row would still have a text column `a`
     * holding "3"; the driver must get the stale-plan error, prepare again, and read `n`: 3.
     */
    private Map<String, Object> ddlRetyped() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect(); Connection admin = connect();
             PreparedStatement ps = conn.prepareStatement("select * from jdbc_ddl where id = ?")) {
            List<Object> columns = new ArrayList<>();
            for (int round = 0; round < 2; round++) {
                for (int i = 0; i < 7; i++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), true, "row");
                        String what = "round " + round + " run " + i;
                        expect(rs.getMetaData().getColumnCount(), 2, "columns in " + what);
                        String name = rs.getMetaData().getColumnName(2);
                        Object value = rs.getObject(2);
                        expect(name, round == 0 ? "a" : "n", "second column's name in " + what);
                        expect(value, round == 0 ? (Object) "one" : (Object) 3, "second column's value in " + what);
                        if (i == 6) {
                            columns.add(name + ":" + value.getClass().getSimpleName());
                        }
                    }
                }
                if (round == 0) {
                    try (Statement st = admin.createStatement()) {
                        st.execute("alter table jdbc_ddl alter column a type int using length(a)");
                        st.execute("alter table jdbc_ddl rename column a to n");
                        moveAway(st);
                    }
                }
            }
            out.put("columns", columns);
        }
        return out;
    }

    /** Leaves no server connection of this user that has a statement prepared (see ddl). */
    private static void moveAway(Statement st) throws Exception {
        // One pipeline up to its Sync: both run on the same server connection in every pool mode.
        expect(st.execute("deallocate all; select coalesce(array_agg(pid), '{}')::text from"
                + " (select pid, pg_terminate_backend(pid) from pg_stat_activity where usename = current_user"
                + " and datname = current_database() and pid <> pg_backend_pid()"
                + " and backend_type = 'client backend') as terminated"), false, "deallocate has no rows");
        expect(st.getMoreResults(), true, "terminated pids");
        String pids;
        try (ResultSet rs = st.getResultSet()) {
            rs.next();
            pids = rs.getString(1);
        }
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (true) {
            try (ResultSet rs = st.executeQuery(
                    "select count(*) from pg_stat_activity where pid = any('" + pids + "'::int[])")) {
                rs.next();
                if (rs.getLong(1) == 0) {
                    return;
                }
            }
            expect(System.nanoTime() < deadline, true, "terminated server connections " + pids + " gone");
            Thread.sleep(50);
        }
    }

    /** setQueryTimeout(1) on pg_sleep(30): the driver cancels it (57014); the connection stays usable. */
    private Map<String, Object> timeout() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect(); Statement st = conn.createStatement()) {
            st.setQueryTimeout(1);
            long started = System.nanoTime();
            try {
                st.executeQuery("select pg_sleep(30)");
                throw new AssertionError("pg_sleep(30) was not cancelled");
            } catch (SQLException e) {
                out.put("sqlstate", e.getSQLState());
                out.put("message", e.getMessage());
            }
            out.put("cancelled_after_ms", (System.nanoTime() - started) / 1_000_000);
            st.setQueryTimeout(0);
            try (ResultSet rs = st.executeQuery("select 'usable'")) {
                rs.next();
                out.put("after", rs.getString(1));
            }
        }
        return out;
    }

    /** executeBatch of 100 inserts into jdbc_items (created empty by the test), then a count. */
    private Map<String, Object> batch() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect()) {
            try (PreparedStatement ps = conn.prepareStatement("insert into jdbc_items (id, name) values (?, ?)")) {
                for (int i = 1; i <= 100; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "item-" + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                expect(counts.length, 100, "update counts");
                int sum = 0;
                for (int c : counts) {
                    sum += c;
                }
                expect(sum, 100, "sum of update counts");
                out.put("update_counts", counts.length);
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("select count(*), sum(id), max(name) from jdbc_items")) {
                expect(rs.next(), true, "count row");
                out.put("count", rs.getLong(1));
                out.put("sum_id", rs.getLong(2));
                out.put("max_name", rs.getString(3));
            }
        }
        return out;
    }

    /** setAutoCommit(false): insert, select, commit; then insert, select, rollback (table jdbc_tx). */
    private Map<String, Object> transaction() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect(); Connection other = connect()) {
            conn.setAutoCommit(false);
            try (PreparedStatement ins = conn.prepareStatement("insert into jdbc_tx (id, note) values (?, ?)");
                 PreparedStatement sel = conn.prepareStatement("select note from jdbc_tx where id = ?")) {
                ins.setInt(1, 1);
                ins.setString(2, "committed");
                expect(ins.executeUpdate(), 1, "insert 1");
                expect(noteOf(sel, 1), "committed", "own insert visible before commit");
                expect(noteOf(other, 1), null, "uncommitted insert invisible to another connection");
                conn.commit();
                expect(noteOf(other, 1), "committed", "committed insert visible to another connection");

                ins.setInt(1, 2);
                ins.setString(2, "rolled back");
                expect(ins.executeUpdate(), 1, "insert 2");
                expect(noteOf(sel, 2), "rolled back", "own insert visible before rollback");
                conn.rollback();
                expect(noteOf(sel, 2), null, "rolled back row gone");
                conn.commit();
            }
            conn.setAutoCommit(true);
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("select string_agg(id || '=' || note, ',' order by id) from jdbc_tx")) {
                rs.next();
                out.put("rows", rs.getString(1));
            }
            out.put("other_sees", noteOf(other, 1));
        }
        return out;
    }

    private static String noteOf(PreparedStatement sel, int id) throws SQLException {
        sel.setInt(1, id);
        try (ResultSet rs = sel.executeQuery()) {
            return rs.next() ? rs.getString(1) : null;
        }
    }

    private static String noteOf(Connection conn, int id) throws SQLException {
        try (PreparedStatement sel = conn.prepareStatement("select note from jdbc_tx where id = ?")) {
            return noteOf(sel, id);
        }
    }

    /** setFetchSize(10) in a transaction over 1000 rows: a portal read in 100 Executes. */
    private Map<String, Object> fetch() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect()) {
            conn.setAutoCommit(false);
            long rows = 0;
            long sum = 0;
            String md5At500 = null;
            String sideQuery = null;
            try (PreparedStatement ps = conn.prepareStatement(
                    "select g, md5(g::text) from generate_series(1, ?) g order by g")) {
                ps.setFetchSize(10);
                ps.setInt(1, 1000);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        rows++;
                        int g = rs.getInt(1);
                        expect(g, (int) rows, "row order");
                        sum += g;
                        if (g == 500) {
                            md5At500 = rs.getString(2);
                            // Another statement on the same connection while the portal is suspended.
                            try (Statement st = conn.createStatement();
                                 ResultSet side = st.executeQuery("select 'side ' || count(*) from pg_cursors")) {
                                side.next();
                                sideQuery = side.getString(1);
                            }
                        }
                    }
                }
            }
            conn.commit();
            out.put("rows", rows);
            out.put("sum", sum);
            out.put("md5_500", md5At500);
            out.put("side_query", sideQuery);
        }
        return out;
    }

    /** timestamptz, numeric, uuid, bytea, int4[] and text[] sent as parameters and read back. */
    private Map<String, Object> types() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        OffsetDateTime ts = OffsetDateTime.of(2024, 2, 29, 23, 59, 58, 123456000, ZoneOffset.ofHours(-7));
        BigDecimal num = new BigDecimal("-12345678901234567890.123456789012345");
        UUID uuid = UUID.fromString("6f1c2d3e-4b5a-4c6d-8e9f-0a1b2c3d4e5f");
        byte[] bytes = new byte[256];
        for (int i = 0; i < bytes.length; i++) {
            bytes[i] = (byte) i;
        }
        Integer[] ints = {1, -2, null, 2147483647};
        String[] texts = {"plain", "with space", "quote\"and\\backslash", "comma,brace{}", "", null, "ünï"};
        try (Connection conn = connect();
             PreparedStatement ps = conn.prepareStatement(
                     "select ?::timestamptz, ?::numeric, ?::uuid, ?::bytea, ?::int4[], ?::text[], "
                             + "(?::timestamptz)::text, current_setting('TimeZone')")) {
            // Past prepareThreshold the driver switches to a named statement and binary results.
            for (int run = 0; run < 8; run++) {
                ps.setObject(1, ts);
                ps.setBigDecimal(2, num);
                ps.setObject(3, uuid);
                ps.setBytes(4, bytes);
                ps.setArray(5, conn.createArrayOf("int4", ints));
                ps.setArray(6, conn.createArrayOf("text", texts));
                ps.setObject(7, ts);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), true, "row");
                    OffsetDateTime gotTs = rs.getObject(1, OffsetDateTime.class);
                    expect(gotTs.toInstant(), ts.toInstant(), "timestamptz run " + run);
                    expect(rs.getBigDecimal(2), num, "numeric run " + run);
                    expect(rs.getObject(3, UUID.class), uuid, "uuid run " + run);
                    expect(Arrays.equals(rs.getBytes(4), bytes), true, "bytea run " + run);
                    Array a5 = rs.getArray(5);
                    expect(Arrays.asList((Integer[]) a5.getArray()), Arrays.asList(ints), "int4[] run " + run);
                    Array a6 = rs.getArray(6);
                    expect(Arrays.asList((String[]) a6.getArray()), Arrays.asList(texts), "text[] run " + run);
                    out.put("timestamptz_text", rs.getString(7));
                    out.put("timezone", rs.getString(8));
                }
            }
            out.put("runs", 8);
            out.put("server_prepared", ps.unwrap(PGStatement.class).isUseServerPrepare());
            out.put("jvm_timezone", java.util.TimeZone.getDefault().getID());
        }
        return out;
    }

    /** 20 threads, each with its own Connection, running `prepared` at once. */
    private Map<String, Object> many() throws Exception {
        int threads = 20;
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        CountDownLatch start = new CountDownLatch(1);
        CountDownLatch connected = new CountDownLatch(threads);
        List<Future<Map<String, Object>>> futures = new ArrayList<>();
        try {
            for (int w = 0; w < threads; w++) {
                final int worker = w;
                futures.add(pool.submit(() -> {
                    start.await();
                    return prepared(worker, connected);
                }));
            }
            start.countDown();
            int ok = 0;
            int executions = 0;
            boolean allServerPrepared = true;
            java.util.Set<Object> backends = new java.util.TreeSet<>();
            int mostBackendsOfOneWorker = 0;
            List<String> failures = new ArrayList<>();
            for (int w = 0; w < threads; w++) {
                try {
                    Map<String, Object> r = futures.get(w).get(120, TimeUnit.SECONDS);
                    ok++;
                    executions += (Integer) r.get("executions");
                    allServerPrepared &= (Boolean) r.get("server_prepared");
                    @SuppressWarnings("unchecked")
                    List<Object> seen = (List<Object>) r.get("backends");
                    backends.addAll(seen);
                    mostBackendsOfOneWorker = Math.max(mostBackendsOfOneWorker, seen.size());
                } catch (java.util.concurrent.ExecutionException e) {
                    failures.add("worker " + w + ": " + describe(e.getCause()));
                }
            }
            if (!failures.isEmpty()) {
                throw new AssertionError(failures.size() + " of " + threads + " workers failed: " + failures);
            }
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("threads", threads);
            out.put("ok", ok);
            out.put("executions", executions);
            out.put("server_prepared", allServerPrepared);
            // Server backends (pg_backend_pid) that served the 20 connections, and the most that
            // one connection was moved across: 20 and 1 when each has its own server connection.
            out.put("distinct_backends", backends.size());
            out.put("most_backends_of_one_connection", mostBackendsOfOneWorker);
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    /**
     * 20 threads, each with its own Connection, run `select id, v from coalesce_items where id = ?`
     * 30 times at once on keys 1..50 (the test made the table: v is 'value-' || id). Past
     * prepareThreshold the driver binds a named statement; every row must be the one of its key.
     */
    private Map<String, Object> coalesce() throws Exception {
        int threads = 20;
        int perThread = 30;
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        CountDownLatch connected = new CountDownLatch(threads);
        List<Future<Boolean>> futures = new ArrayList<>();
        try {
            for (int w = 0; w < threads; w++) {
                final int worker = w;
                futures.add(pool.submit(() -> lookups(worker, perThread, connected)));
            }
            int ok = 0;
            boolean allServerPrepared = true;
            List<String> failures = new ArrayList<>();
            for (int w = 0; w < threads; w++) {
                try {
                    allServerPrepared &= futures.get(w).get(120, TimeUnit.SECONDS);
                    ok++;
                } catch (java.util.concurrent.ExecutionException e) {
                    failures.add("worker " + w + ": " + describe(e.getCause()));
                }
            }
            if (!failures.isEmpty()) {
                throw new AssertionError(failures.size() + " of " + threads + " workers failed: " + failures);
            }
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("threads", threads);
            out.put("ok", ok);
            out.put("requests", threads * perThread);
            out.put("server_prepared", allServerPrepared);
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    /** One worker of `coalesce`: true when the driver ended on a named server-side statement. */
    private boolean lookups(int worker, int count, CountDownLatch connected) throws Exception {
        java.util.Random keys = new java.util.Random(worker);
        try (Connection conn = connect();
             PreparedStatement ps = conn.prepareStatement("select id, v from coalesce_items where id = ?")) {
            connected.countDown();
            expect(connected.await(60, TimeUnit.SECONDS), true, "all workers connected");
            expect(conn.getAutoCommit(), true, "autocommit");
            for (int i = 0; i < count; i++) {
                int id = 1 + keys.nextInt(50);
                ps.setInt(1, id);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), true, "row of key " + id);
                    expect(rs.getInt(1), id, "id of key " + id);
                    expect(rs.getString(2), "value-" + id, "v of key " + id);
                    expect(rs.next(), false, "one row of key " + id);
                }
            }
            return ps.unwrap(PGStatement.class).isUseServerPrepare();
        }
    }

    private static void expect(Object got, Object want, String what) {
        boolean same = got == null ? want == null
                : (got instanceof BigDecimal && want instanceof BigDecimal)
                        ? ((BigDecimal) got).compareTo((BigDecimal) want) == 0
                        : got.equals(want);
        if (!same) {
            throw new AssertionError(what + ": got " + got + ", want " + want);
        }
    }

    private static String describe(Throwable e) {
        StringBuilder s = new StringBuilder(e.toString());
        if (e instanceof SQLException) {
            s.append(" [SQLSTATE ").append(((SQLException) e).getSQLState()).append(']');
        }
        for (Throwable c = e.getCause(); c != null && c != e; c = c.getCause()) {
            s.append(" caused by ").append(c);
        }
        return s.toString();
    }

    /** Just enough JSON for the result maps (strings, numbers, booleans, null, lists of those). */
    private static final class Json {
        static String of(Map<String, Object> map) {
            StringBuilder s = new StringBuilder("{");
            for (Map.Entry<String, Object> e : map.entrySet()) {
                if (s.length() > 1) {
                    s.append(", ");
                }
                s.append(quote(e.getKey())).append(": ").append(value(e.getValue()));
            }
            return s.append('}').toString();
        }

        private static String value(Object v) {
            if (v == null) {
                return "null";
            }
            if (v instanceof Number || v instanceof Boolean) {
                return v.toString();
            }
            if (v instanceof List) {
                StringBuilder s = new StringBuilder("[");
                for (Object item : (List<?>) v) {
                    s.append(s.length() > 1 ? ", " : "").append(value(item));
                }
                return s.append(']').toString();
            }
            return quote(v.toString());
        }

        private static String quote(String v) {
            StringBuilder s = new StringBuilder("\"");
            for (char c : v.toCharArray()) {
                switch (c) {
                    case '"': s.append("\\\""); break;
                    case '\\': s.append("\\\\"); break;
                    case '\n': s.append("\\n"); break;
                    default:
                        if (c < 0x20) {
                            s.append(String.format("\\u%04x", (int) c));
                        } else {
                            s.append(c);
                        }
                }
            }
            return s.append('"').toString();
        }
    }
}

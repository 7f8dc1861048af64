// pgjdbc (Debian's libpostgresql-jdbc-java) driven through pgsluice, one scenario per run.
//
//   javac -cp /usr/share/java/postgresql.jar -d OUT DriverCheck.java
//   java -cp /usr/share/java/postgresql.jar:OUT DriverCheck JDBC_URL USER PASSWORD SCENARIO
//
// Scenarios: prepared, batch, transaction, fetch, types, many (see the method of each name).
// On success prints one JSON object (the values the scenario saw) as the last line of stdout and
// exits 0; on a wrong value or any exception prints the stack trace (with the SQLSTATE) to stderr
// and exits 1. tests/integration/test_drivers_jvm_node.py runs it and checks the JSON.
//
// What each scenario exercises in a transaction-mode proxy (DESIGN §2):
//   prepared     pgjdbc's switch from the unnamed statement to a named server-side one (S_n)
//                after prepareThreshold (5) executions, then Bind-only round trips of that name
//   batch        100 Parse/Bind/Execute groups in one pipeline with a single Sync
//   transaction  BEGIN sent lazily in the same pipeline as the first statement; COMMIT/ROLLBACK
//   fetch        a named portal read 10 rows at a time (Execute with a row limit, PortalSuspended)
//                with another statement run on the same connection while the portal is open
//   types        binary and text transfer of timestamptz/numeric/uuid/bytea/arrays, and the
//                client's TimeZone startup parameter on whatever server connection serves it
//   many         20 connections doing `prepared` at once, all naming their statement S_1 for the
//                same SQL, so a server connection sees the same name from many clients

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
            case "prepared": return prepared(0);
            case "batch": return batch();
            case "transaction": return transaction();
            case "fetch": return fetch();
            case "types": return types();
            case "many": return many();
            default: throw new IllegalArgumentException("unknown scenario " + scenario);
        }
    }

    private Connection connect() throws SQLException {
        return DriverManager.getConnection(url, props);
    }

    /** One PreparedStatement executed 20 times in autocommit; the driver names it after 5 runs. */
    private Map<String, Object> prepared(int worker) throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect();
             PreparedStatement ps = conn.prepareStatement(
                     "select ?::int4 * 2 as doubled, ? || ':' || ?::int4 as label, pg_backend_pid() as pid")) {
            expect(conn.getAutoCommit(), true, "autocommit");
            int threshold = ps.unwrap(PGStatement.class).getPrepareThreshold();
            List<Integer> pids = new ArrayList<>();
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
            out.put("distinct_backends", pids.size());
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
        List<Future<Map<String, Object>>> futures = new ArrayList<>();
        try {
            for (int w = 0; w < threads; w++) {
                final int worker = w;
                futures.add(pool.submit(() -> {
                    start.await();
                    return prepared(worker);
                }));
            }
            start.countDown();
            int ok = 0;
            int executions = 0;
            boolean allServerPrepared = true;
            List<String> failures = new ArrayList<>();
            for (int w = 0; w < threads; w++) {
                try {
                    Map<String, Object> r = futures.get(w).get(120, TimeUnit.SECONDS);
                    ok++;
                    executions += (Integer) r.get("executions");
                    allServerPrepared &= (Boolean) r.get("server_prepared");
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
            return out;
        } finally {
            pool.shutdownNow();
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

    /** Just enough JSON for the flat result maps (strings, numbers, booleans, null). */
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

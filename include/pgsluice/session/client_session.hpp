#pragma once
// One client connection: startup, authentication, then the relay between the client and the server
// connection it holds (DESIGN §1–2). Both halves run on the session's worker, one at a time, and
// both are chains of completion handlers, not coroutines: a coroutine suspended and resumed through
// Asio's awaitable machinery on every read cost a microsecond of CPU per transaction.
//  - the client side reads the client socket and writes to the server: each read's handler takes
//    the run of whole messages and forwards it, leasing a connection first when it has none (under
//    load the lease waits in the pool's line with a handler, LeaseReady). What cannot be done at
//    once (acquire() for a connect or the breaker, parameters to apply, a write the server does not
//    take at once, a Bind held for a statement's shape, errors) goes on in a spawned coroutine,
//    which reads the client again at its end;
//  - the server side relays what the server sends to the client, watches ReadyForQuery, and in
//    transaction mode gives the connection back: one read of the server after another, started by
//    the client side when it sends a server something and ended when the connection is given back.
//    Its rare slow steps (a client that does not take the reply at once, a lost server) are spawned
//    coroutines.
// Every byte the client receives goes through one writer (send_client), in the order the producers
// call it: the server side's relay, the replies pgsluice makes, errors and FATALs. What the socket
// does not take at once is written by a chain of handlers; the server side reads the server again
// only once the client has taken its bytes, and a coroutine that must know its bytes went out
// waits for client_drained().
#include <array>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "pgsluice/net/io.hpp"
#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/md5.hpp"
#include "pgsluice/protocol/scram.hpp"
#include "pgsluice/server/server_connection.hpp"
#include "pgsluice/session/recycled.hpp"
#include "pgsluice/session/session_context.hpp"
#include "pgsluice/session/statement_tracker.hpp"

namespace pgsluice::session {

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  ClientSession(net::tcp::socket socket, const net::tcp::endpoint& peer, std::shared_ptr<SessionContext> context);
  ~ClientSession();

  // A session for an accepted connection, on the socket's worker (one thread: no strand needed):
  // logs the client in and starts the relay. The login is a chain of handlers like the relay (a
  // coroutine per login cost its frames, each above malloc's per-thread cache, in a storm of logins);
  // a client of a TLS listener, and the rare steps after authentication (a parameter fetch, a session
  // mode lease, the admin console), go on in the coroutine run() and login_rest().
  static void start(net::tcp::socket socket, const net::tcp::endpoint& peer, std::shared_ptr<SessionContext> context);

  // After a login that did not reach the relay: stops the server side (its pending read holds the
  // session).
  net::awaitable<void> finish();

  // From the cancel registry, on any thread: cancel what the server connection held now is running.
  void forward_cancel();
  // SIGTERM, from any thread: close at once if idle, else after the transaction in flight ends.
  // What the admin console shows of this client: `done` runs on the session's worker (any thread
  // may ask).
  void describe(std::function<void(ClientDescription)> done);
  void begin_shutdown();
  // shutdown_timeout expired, from any thread: close now with 57P01 whatever is in flight.
  void force_shutdown();

 private:
  enum class LoginOutcome { proceed, closed, cancel_request };

  // Startup and authentication as a coroutine (TLS). True: authenticated, or client_login_timeout
  // expired (login_rest tells the client); false: the login ended.
  net::awaitable<bool> run();

  net::awaitable<LoginOutcome> startup();
  net::awaitable<bool> authenticate();
  net::awaitable<bool> finish_login();

  // The login's steps that do no I/O, shared by the handlers and the coroutine. A FATAL they send is
  // queued on the client's writer (closed: the login ends once it is written).
  enum class StartupStep { proceed, next_packet, ssl_request, cancel_request, closed };
  // Takes the whole startup packet of `size` bytes at the front of buffer_.
  StartupStep take_startup_packet(std::size_t size);
  enum class AuthStep { done, read_message, closed };
  // Looks the user up and sends the first challenge (md5, SCRAM), or none (trust).
  AuthStep begin_authentication();
  // The whole message at the front of buffer_ for the challenge sent (consumed).
  AuthStep take_password_message(const protocol::MessageView& message);
  // finish_login without a wait, as nearly every login in the pooled modes can (the service knows
  // its server's parameters and how it spells the client's values): the reply is queued. False: it
  // cannot (nothing was changed), finish_login does it.
  bool finish_login_now();
  // AuthenticationOk, ParameterStatus (the `shown` values, or the client's own in their place),
  // BackendKeyData and ReadyForQuery, after what login_reply_ holds. `status_messages`: the
  // ParameterStatus messages of `shown` already built (the client changes none of them).
  bool queue_login_reply(const server::ParameterMap& shown, bool client_values,
                         const protocol::Buffer* status_messages = nullptr);
  bool queue_client(const protocol::Buffer& bytes);
  static protocol::Buffer& login_scratch();  // cleared; valid until the next call on this thread
  void queue_fatal(std::string_view sqlstate, std::string_view message);
  // client_login_timeout (DESIGN §8): when it fires before the login is done, the stream's pending
  // read or write is cancelled and the login ends with that error.
  void arm_login_timer();
  // The handlers of the login (start()).
  struct LoginRead;
  // What the login waits for now: a startup packet, or the answer to a challenge.
  enum class LoginStep : std::uint8_t { startup, md5, scram_first, scram_final };
  void take_login_bytes(std::shared_ptr<ClientSession> self);
  void on_login_read(std::shared_ptr<ClientSession> self, net::error_code ec, std::size_t count);
  void login_authenticated(std::shared_ptr<ClientSession> self);
  // The login of a client of a TLS listener: run(), then login_rest().
  net::awaitable<void> login_coroutine(std::shared_ptr<ClientSession> self);
  // After authentication, what may wait (a parameter fetch, a session mode lease, the admin console)
  // or fail: the timeout's verdict, draining, the service, the reply, then the relay.
  net::awaitable<void> login_rest(std::shared_ptr<ClientSession> self);
  // Logged in: counted, logged, and the relay starts with what the client sent after its login.
  void enter_relay(std::shared_ptr<ClientSession> self);
  // login_reply_'s bytes, to append what the login sends next to; login_reply_ is empty after.
  protocol::Buffer take_login_reply() {
    protocol::Buffer out = std::move(login_reply_);
    login_reply_.clear();
    return out;
  }

  // The client side (see the top of this file). Each read's handler holds the session.
  struct ClientRead;
  struct ClientIdleRead;
  struct LeaseReady;
  void read_client(std::shared_ptr<ClientSession> self);
  void on_client_idle_read(std::shared_ptr<ClientSession> self, net::error_code ec, std::size_t count);
  void on_client_read(std::shared_ptr<ClientSession> self, net::error_code ec, std::size_t count);
  // Takes the whole messages at the front of buffer_ as the next run (run_) and forwards it.
  void on_client_data(std::shared_ptr<ClientSession> self);
  // The lease that waited in the pool's line (lease_wait_) was served, failed or timed out.
  void on_lease_ready(std::shared_ptr<ClientSession> self);
  // What the lease needs beyond that: acquire() (a connect, the breaker ...), the rest of a wait
  // (finish_wait), parameters to apply; or it failed, and the run is answered here.
  net::awaitable<void> attach_slowly(std::shared_ptr<ClientSession> self, std::shared_ptr<pool::Pool::Waiter> waited,
                                     std::optional<pool::AcquireResult> lease, std::string sqlstate,
                                     std::string error);
  // Sends the run to the attached server connection: at once, or forward_slowly() goes on (a write
  // the server does not take at once, a Bind held for a shape, replies made here).
  void forward_run(std::shared_ptr<ClientSession> self);
  net::awaitable<void> forward_slowly(std::shared_ptr<ClientSession> self, std::size_t at, std::size_t written,
                                      bool sent, bool held);
  // The messages of the run from `at` for the server into `out`, up to a held Bind (then true).
  bool build_chunk(std::size_t& at, Outgoing& out);
  // The run is done: consumes it and reads on, or ends the client side.
  void end_run(std::shared_ptr<ClientSession> self, bool failed);
  net::awaitable<void> refuse_client(std::shared_ptr<ClientSession> self, std::string sqlstate, std::string message);
  void end_client();
  void log_close() const;
  // What end_client() starts once: the server connection given back, the server side stopped.
  net::awaitable<void> end_session(std::shared_ptr<ClientSession> self);

  // LISTEN / UNLISTEN outside a transaction, in the pooled modes: served by the service's listener
  // connection (listener_hub.hpp) instead of a server connection. True: the run's first message is
  // one and serve_listens answers it.
  bool try_serve_listens(std::shared_ptr<ClientSession>& self);
  // The front of the client's buffer as one statement run alone: a Query, or an unnamed Parse
  // (no parameter types) / Bind (unnamed portal, no parameters) / Describe? / Execute / Sync.
  struct SingleStatement {
    std::string_view text;  // a Query's with its NUL, as the tracker reads it
    bool extended = false;
    char describe = 0;      // the Describe's 'S' or 'P'; 0: none
    std::size_t size = 0;   // bytes of the buffer it takes
  };
  std::optional<SingleStatement> single_statement() const;
  // Appends what Postgres answers for it up to its CommandComplete (exclusive) in the extended
  // protocol: ParseComplete, BindComplete, and the Describe's ParameterDescription / NoData.
  static void append_extended_preamble(const SingleStatement& statement, protocol::Buffer& out);
  // pgsluice answered it: the client's unnamed statement is its text (extended) or none (Query).
  void answered_here(const SingleStatement& statement, std::shared_ptr<const sql::SessionEffects> effects);
  // Between transactions with no server connection: a batch that is only a literal SET this client
  // has run successfully before (SET work_mem = '64kB'; simple, or unnamed Parse/Bind/[Describe]/
  // Execute/Sync) is answered here. The value is known and valid for this client, so it is only
  // recorded, and carried to the next server connection with the rest of the client's settings:
  // no lease, no round trip (a transaction that begins with a SET costs one lease, not two).
  enum class SetAnswer { no, answered, client_gone };
  SetAnswer try_answer_set();
  // After settled settings: the literal SETs this client may be answered here from now on.
  void confirm_literals(const std::vector<StatementTracker::SettledSetting>& settled);
  net::awaitable<void> serve_listens(std::shared_ptr<ClientSession> self,
                                     std::shared_ptr<const sql::SessionEffects> effects, SingleStatement statement);
  // The coalescer (DESIGN §4): between transactions, one statement at the front of the buffer that
  // is a single read-only SELECT (a Query, or one Parse?/Bind/Describe?/Execute/Sync group) is handed
  // to the service's coalescer instead of a server connection. True: serve_coalesced answers it.
  bool try_coalesce(std::shared_ptr<ClientSession>& self);
  struct CoalescedWait;
  // N+1 detection (DESIGN §4): the same statement shape run again and again with other values.
  void follow_streak(const std::shared_ptr<const sql::SelectAnalysis>& analysis, std::size_t values);
  void end_streak();
  // A cancel for a statement the coalescer is answering: the client stops waiting (57014); the
  // shared execution goes on for the others.
  void cancel_coalesced();
  net::awaitable<void> serve_coalesced(std::shared_ptr<ClientSession> self,
                                       std::shared_ptr<coalesce::Submission> submission, std::size_t size,
                                       std::string statement);
  // database "pgsluice": the admin console (admin.users only), its simple queries answered by
  // context_->admin until the client leaves.
  net::awaitable<void> serve_admin();
  // A notification from the listener connection (on this session's worker; null: the listener
  // connection was lost). Written at once between transactions, else after the transaction.
  void deliver_notification(std::shared_ptr<const protocol::Buffer> frame);
  void flush_notifications();
  // Keeps hub_channels_ in step with what the listener connection serves this client.
  void follow_hub_channels(const std::vector<sql::ListenChange>& changes);
  // UNLISTEN / DISCARD ALL that went to a server connection also end the listener's subscriptions.
  void pass_on_unlistens();

  // The server side (see the top of this file). Each read's handler holds the session.
  struct ServerRead;
  void read_server(std::shared_ptr<ClientSession> self);
  void on_server_read(std::shared_ptr<ClientSession> self, net::error_code read_ec, std::size_t count);
  // Relays the whole messages in the server buffer (after a read, or once the listener barrier passed).
  void relay_server_buffer(std::shared_ptr<ClientSession> self);
  // A ReadyForQuery that ends a transaction of a client the listener connection serves waits for a
  // round trip there: a notification the transaction caused (its own NOTIFY, a trigger's pg_notify)
  // reaches the client before it, as Postgres sends it before its ReadyForQuery.
  void hold_for_listener(std::shared_ptr<ClientSession> self);
  // What comes after the relayed bytes (`offset` of them) reached the client: give the connection
  // back, read on, or end.
  void after_server_write(std::shared_ptr<ClientSession> self, std::size_t offset, bool ready_seen);
  net::awaitable<void> lose_server(std::shared_ptr<ClientSession> self, std::string reason);
  void end_server_reader();

  // Leases a server connection and makes its session parameters this client's.
  net::awaitable<bool> attach_server(std::string& sqlstate, std::string& error);
  // Its synchronous fast path: an idle connection with this client's parameters already in place.
  // False leaves the rest to attach_server (server_ may then be set already, parameters to apply).
  bool attach_server_now();
  // Takes what the pool's acquire() gave: false (sqlstate, error set) when it gave no connection.
  bool take_lease(pool::AcquireResult lease, std::string& sqlstate, std::string& error);
  // server_ has this client's parameters already (then it is the cancel target from now on).
  bool parameters_in_place();
  void note_cancel_target();
  void release_server(bool reusable);
  // Records the settings a probe settled (StatementTracker::take_settled) for this client and as
  // what the attached connection carries.
  // log.slow_statements: what the batch being timed starts with, and the line for a slow one.
  void remember_slow_text();
  void log_slow_statement(std::chrono::steady_clock::duration took);
  // The client is pinned to its server connection: logged and counted once per client.
  void note_pin();
  void record_settled_state();
  net::awaitable<void> stop_server_reader();
  net::awaitable<void> finish_server();
  // Answers the messages of a run the proxy could not send on (no server connection), the way
  // Postgres answers a failed statement: an ErrorResponse, then ReadyForQuery at each Sync/Query.
  void fail_run(protocol::Bytes run, const std::string& sqlstate, const std::string& error, protocol::Buffer& out);
  net::awaitable<void> send_fatal(std::string_view sqlstate, std::string_view message);
  // The client's writer. send_client queues `out` behind what is queued already and writes what the
  // socket takes now; false: the client is gone. `borrowed`: out's pieces stay valid until the
  // queue drains (the server side's relay, whose buffer is consumed only then), so what the socket
  // does not take at once is written from them without a copy.
  bool send_client(Outgoing& out, bool borrowed = false);
  void flush_client(std::shared_ptr<ClientSession> self);
  // A client that does not read what it was sent is not read either once that passes
  // kMaxClientBacklog (as a Postgres backend blocked on its output reads no input): its memory stays
  // bounded whatever it pipelines (e.g. SETs pgsluice answers itself).
  net::awaitable<void> read_after_drain(std::shared_ptr<ClientSession> self);
  // The same for statements in flight (each holds the tracker's bookkeeping until its reply): past
  // kMaxStatementsInFlight the client is not read until the server side has answered half of them.
  static constexpr int kMaxStatementsInFlight = 4096;
  bool client_read_paused_ = false;
  void resume_client_read(std::shared_ptr<ClientSession> self);
  void on_client_flushed(std::shared_ptr<ClientSession> self, net::error_code ec);
  // Waits until everything queued is written; false: the client is gone.
  net::awaitable<bool> client_drained();
  net::awaitable<bool> write_client(const protocol::Buffer& bytes);
  // Replies made by pgsluice that nothing the server owes comes before (e.g. CloseComplete + Flush).
  net::awaitable<bool> send_due_replies();

  // query_timeout and idle_in_transaction_timeout share one timer: at most one of them runs.
  enum class TimerPurpose { none, query, cancel_answer, idle_in_transaction };
  void arm_timer(TimerPurpose purpose, std::chrono::milliseconds after);
  void disarm_timer();
  net::awaitable<void> watch_timer(std::uint64_t generation);
  // Ends the session from outside the relay: stops the server reader, sends a FATAL, closes.
  net::awaitable<void> close_with(std::string sqlstate, std::string message);
  StatementTracker& tracker();
  // The client may leave now (no statement in flight, no transaction open).
  bool between_transactions() const;

  net::Stream stream_;
  const void* worker_;  // pool::context_key of the socket's worker
  std::shared_ptr<SessionContext> context_;
  std::shared_ptr<const Snapshot> snapshot_;  // the configuration in force when the client arrived
  std::shared_ptr<const config::Config> config_;
  std::size_t max_message_size_;
  net::MessageBuffer buffer_;
  // An idle client's next bytes land here first: buffer_ takes storage only once some came.
  std::array<std::uint8_t, 256> idle_read_;
  // Authentication's last message (SCRAM's SASLFinal), written with whatever the login sends next
  // (AuthenticationOk and the rest, or its error): one send instead of two.
  protocol::Buffer login_reply_;
  // The authentication under way: the user's entry (null: unknown), the md5 salt or SCRAM exchange.
  LoginStep login_step_ = LoginStep::startup;
  const UserSecret* secret_ = nullptr;
  protocol::md5::Salt md5_salt_{};
  std::optional<protocol::scram::ServerExchange> scram_;
  std::string peer_;

  // Login results.
  std::string user_;
  std::string database_;
  std::shared_ptr<Service> service_;
  server::ParameterMap parameters_;  // what this client wants on any server connection it is given
  server::ParameterMap startup_parameters_;  // what it asked for at startup (RESET ALL returns to them)
  bool pin_logged_ = false;                  // "pinned to its server connection" was logged
  std::string parameters_fingerprint_;  // of parameters_; empty = to be computed
  bool counted_in_service_ = false;     // in service_->counters' client count
  std::chrono::steady_clock::time_point connected_at_ = std::chrono::steady_clock::now();
  // Literal SETs of this client the server confirmed (try_answer_set), the most recent last.
  std::vector<std::shared_ptr<sql::SessionEffects::LiteralSetting>> confirmed_literals_;
  std::optional<CancelRegistry::Key> cancel_key_;
  bool coalesce_bypass_ = false;  // the coalescer gave the statement back: it goes the usual way once
  std::shared_ptr<const sql::SelectAnalysis> streak_;  // the shape of the client's current run of lookups
  std::size_t streak_values_ = 0;                      // a hash of the last values
  std::uint32_t streak_count_ = 0;
  std::chrono::steady_clock::time_point streak_start_{};
  std::chrono::steady_clock::time_point streak_last_{};

  // Relay state (on the session's worker).
  struct Run {
    std::size_t offset = 0;  // whole messages at the front of buffer_
    std::size_t want = 0;    // the message after them needs this many bytes (0: unknown)
    bool terminate = false;  // a Terminate ends the run
    std::uint32_t statements = 0;  // Query, FunctionCall and Execute messages in it (for /metrics)
  };
  Run run_;
  // For the acquire and query duration histograms (metrics::ServiceCounters); {}: not timing.
  std::chrono::steady_clock::time_point acquire_started_{};
  std::chrono::steady_clock::time_point query_started_{};
  std::string slow_text_;  // log.slow_statements on: the first statement of what is being timed
  std::shared_ptr<pool::Pool::Waiter> lease_wait_;  // the lease in the pool's line
  bool client_done_ = false;  // the client side ended (end_client)
  std::unique_ptr<server::ServerConnection> server_;
  bool server_reader_running_ = false;  // the server side is relaying (from attach to release)
  bool stop_server_reader_ = false;
  net::Event server_reader_done_;
  net::Event answer_known_;  // the server side saw the answer a held message waits for (or stopped)
  int expected_ready_ = 0;          // ReadyForQuery messages the server still owes
  bool in_extended_batch_ = false;  // extended-protocol messages sent since the last Sync
  bool client_writing_ = false;     // the client side is writing to the server
  bool skip_until_sync_ = false;    // a failed extended batch: drop messages until Sync
  char transaction_status_ = 'I';
  bool closing_ = false;
  bool rewrite_statements_ = false;  // transaction and statement modes: named statements are mapped
  // Transaction and statement modes: made on the first message (tracker()), dropped between
  // transactions while it carries nothing (no statements, no session state).
  RecycledPtr<StatementTracker> tracker_;
  Outgoing to_server_;  // the client side's run, reused
  Outgoing to_client_;  // the server reader's run, reused
  // The client's writer (send_client): what is queued and not yet written, in order.
  protocol::Buffer client_backlog_;  // copied bytes, written after the borrowed ones
  protocol::Buffer client_in_flight_;  // the part of the backlog being written now
  net::asio::const_buffer client_in_flight_buffer_;  // it, as the write's buffer sequence
  std::vector<net::asio::const_buffer> client_borrowed_;  // the rest of a borrowed run, written first
  bool client_flushing_ = false;     // a write to the client is under way
  bool client_write_failed_ = false;
  net::Event client_drained_;
  // Notifications from the listener connection (listener_hub.hpp).
  std::uint64_t listen_id_ = 0;            // this client's subscriber number there; 0: none yet
  protocol::Buffer pending_notifications_;  // held until the transaction in flight ends
  std::vector<std::string> hub_channels_;   // the channels it serves this client
  // The server side waits for the client to take its run: after_server_write goes on then.
  bool server_waits_for_client_ = false;
  std::size_t server_run_offset_ = 0;
  bool server_run_ready_seen_ = false;
  // hold_for_listener: the server side waits for the listener connection's round trip.
  bool server_held_for_listener_ = false;
  bool listener_barrier_passed_ = false;  // ... it has passed: the ReadyForQuery goes on
  std::uint64_t listener_hold_generation_ = 0;

  net::asio::steady_timer timer_;
  TimerPurpose timer_purpose_ = TimerPurpose::none;
  std::uint64_t timer_generation_ = 0;
  // client_login_timeout: timer_ watches the login with a plain handler (no coroutine, no parallel
  // group per login); when it fires while logging_in_, the stream's operations are cancelled.
  bool logging_in_ = false;
  bool login_timed_out_ = false;
  bool timeout_cancel_pending_ = false;  // the 57014 that comes back is pgsluice's query_timeout
  bool draining_ = false;                // SIGTERM: close as soon as between transactions
  bool admin_busy_ = false;              // the admin console is running a command

  // What forward_cancel() needs, guarded: it runs on another connection's worker. The server
  // connection held (null: none), cleared under the lock before it is given back, so the other
  // worker reads its target and key while it is still ours; not a copy of its target's shared
  // pointer per lease, whose count every worker's leases would pass between them.
  std::mutex cancel_mutex_;
  const server::ServerConnection* cancel_server_ = nullptr;
  std::shared_ptr<CoalescedWait> coalesced_wait_;  // a statement the coalescer is answering
};

// Entry point for an accepted connection, on its worker (ClientSession::start).
// peer: the address accept() gave (asking the socket again would cost every login a getpeername).
inline void start_client_session(net::tcp::socket socket, const net::tcp::endpoint& peer,
                                 std::shared_ptr<SessionContext> context) {
  ClientSession::start(std::move(socket), peer, std::move(context));
}

}  // namespace pgsluice::session

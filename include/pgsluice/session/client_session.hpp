#pragma once
// One client connection: startup, authentication, then the relay between the client and the server
// connection it holds (DESIGN §1–2). Two coroutines share the session's strand:
//  - the client reader owns reading the client socket and writing to the server;
//  - the server reader runs while a server connection is attached, relays what the server sends to
//    the client, watches ReadyForQuery, and in transaction mode gives the connection back. It is
//    spawned at the first attach and sleeps between attaches until finish().
// While a server is attached only the server reader writes to the client; otherwise only the client
// reader does. That rule is what keeps writes from interleaving.
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "pgsluice/net/io.hpp"
#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/server/server_connection.hpp"
#include "pgsluice/session/session_context.hpp"
#include "pgsluice/session/statement_tracker.hpp"

namespace pgsluice::session {

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  ClientSession(net::tcp::socket socket, std::shared_ptr<SessionContext> context);
  ~ClientSession();

  // Runs the session to its end; the socket's executor must be a strand.
  net::awaitable<void> run();

  // After run(), whatever way it ended: stops the server reader, which holds the session alive.
  net::awaitable<void> finish();

  // From the cancel registry, on any thread: cancel what the server connection held now is running.
  void forward_cancel();
  // SIGTERM, from any thread: close at once if idle, else after the transaction in flight ends.
  void begin_shutdown();
  // shutdown_timeout expired, from any thread: close now with 57P01 whatever is in flight.
  void force_shutdown();

 private:
  enum class LoginOutcome { proceed, closed, cancel_request };

  net::awaitable<LoginOutcome> startup();
  net::awaitable<bool> authenticate(const std::string& user);
  net::awaitable<bool> finish_login();
  net::awaitable<void> relay();
  net::awaitable<void> server_reader();

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
  net::awaitable<void> stop_server_reader();
  net::awaitable<void> finish_server();
  // Answers the messages of a run the proxy could not send on (no server connection), the way
  // Postgres answers a failed statement: an ErrorResponse, then ReadyForQuery at each Sync/Query.
  void fail_run(protocol::Bytes run, const std::string& sqlstate, const std::string& error, protocol::Buffer& out);
  net::awaitable<void> send_fatal(std::string_view sqlstate, std::string_view message);
  net::awaitable<bool> write_client(const protocol::Buffer& bytes);
  // Both coroutines may owe the client bytes in transaction mode (replies pgsluice makes itself):
  // whoever writes to the client holds this, so runs never interleave.
  net::awaitable<void> lock_client_writes();
  void unlock_client_writes();
  // The server reader's hot path: writes now if nobody holds the write lock and the socket takes
  // it all (true; `ec` says how it went), else finish_write_client takes the lock and the rest.
  bool try_write_client(Outgoing& out, std::size_t& written, net::error_code& ec);
  net::awaitable<bool> finish_write_client(Outgoing& out, std::size_t written);
  // Replies made by pgsluice that nothing the server owes comes before (e.g. CloseComplete + Flush).
  net::awaitable<bool> send_due_replies();

  // query_timeout and idle_in_transaction_timeout share one timer: at most one of them runs.
  enum class TimerPurpose { none, query, cancel_answer, idle_in_transaction };
  void arm_timer(TimerPurpose purpose, std::chrono::milliseconds after);
  void disarm_timer();
  net::awaitable<void> watch_timer(std::uint64_t generation);
  // Ends the session from outside the relay: stops the server reader, sends a FATAL, closes.
  net::awaitable<void> close_with(std::string sqlstate, std::string message);
  // The client may leave now (no statement in flight, no transaction open).
  bool between_transactions() const;

  net::tcp::socket socket_;
  std::shared_ptr<SessionContext> context_;
  std::shared_ptr<const Snapshot> snapshot_;  // the configuration in force when the client arrived
  std::shared_ptr<const config::Config> config_;
  std::size_t max_message_size_;
  net::MessageBuffer buffer_;
  std::string peer_;

  // Login results.
  std::string user_;
  std::string database_;
  std::shared_ptr<Service> service_;
  server::ParameterMap parameters_;  // what this client wants on any server connection it is given
  std::string parameters_fingerprint_;  // of parameters_; empty = to be computed
  std::optional<CancelRegistry::Key> cancel_key_;

  // Relay state (on the strand).
  std::unique_ptr<server::ServerConnection> server_;
  bool server_reader_running_ = false;
  bool stop_server_reader_ = false;
  net::Event server_reader_done_;
  net::Event shape_known_;  // the server reader saw the answer a held Bind waits for (or stopped)
  bool server_reader_spawned_ = false;  // the server reader lives from the first attach to finish()
  bool server_reader_retired_ = false;
  net::InlineEvent server_attached_;  // wakes the server reader: a server is attached, or finish()
  int expected_ready_ = 0;          // ReadyForQuery messages the server still owes
  bool in_extended_batch_ = false;  // extended-protocol messages sent since the last Sync
  bool client_writing_ = false;     // the client reader is writing to the server
  bool skip_until_sync_ = false;    // a failed extended batch: drop messages until Sync
  char transaction_status_ = 'I';
  bool closing_ = false;
  bool rewrite_statements_ = false;  // transaction and statement modes: named statements are mapped
  StatementTracker statements_;
  Outgoing to_server_;  // the client reader's run, reused
  Outgoing to_client_;  // the server reader's run, reused
  bool client_write_locked_ = false;
  net::Event client_write_unlocked_;

  net::asio::steady_timer timer_;
  TimerPurpose timer_purpose_ = TimerPurpose::none;
  std::uint64_t timer_generation_ = 0;
  bool timeout_cancel_pending_ = false;  // the 57014 that comes back is pgsluice's query_timeout
  bool draining_ = false;                // SIGTERM: close as soon as between transactions

  // What forward_cancel() needs, guarded: it runs on another connection's strand.
  std::mutex cancel_mutex_;
  std::shared_ptr<const server::ServerTarget> cancel_target_;
  protocol::BackendKeyData cancel_backend_key_;
};

// Entry point for an accepted connection.
net::awaitable<void> run_client_session(net::tcp::socket socket, std::shared_ptr<SessionContext> context);

}  // namespace pgsluice::session

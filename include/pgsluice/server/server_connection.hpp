#pragma once
// One connection from pgsluice to Postgres: connect, authenticate (SCRAM-SHA-256, MD5, cleartext,
// trust), remember what the server reported (ParameterStatus, BackendKeyData), reset, and the
// session parameters pgsluice applied on behalf of clients.
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pgsluice/net/io.hpp"
#include "pgsluice/pool/pool.hpp"
#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/server/parameter_map.hpp"
#include "pgsluice/server/server_statements.hpp"

namespace pgsluice::server {

// Where and as whom to connect.
struct ServerTarget {
  std::string host;
  std::uint16_t port = 5432;
  std::string user;
  std::optional<std::string> password;
  std::string database;
  std::chrono::milliseconds connect_timeout{2000};
  std::size_t max_message_size = 64u * 1024u * 1024u;
  // TLS towards the server (backends.<name>.tls): the mode and files decide equality (a change
  // retires the connections); `tls_source` gives the context built from the files as they were at
  // the last reload (rotated certificates reach new connections only).
  net::ServerTlsMode tls_mode = net::ServerTlsMode::disable;
  net::TlsFiles tls_files;
  std::shared_ptr<net::TlsSource> tls_source;
  // SCRAM channel binding (libpq's channel_binding): prefer binds when the server offers
  // SCRAM-SHA-256-PLUS over TLS; require fails a login that does not end bound, and sends no
  // password to a server that asks for one in the clear or as MD5.
  enum class ChannelBinding : std::uint8_t { disable, prefer, require };
  ChannelBinding channel_binding = ChannelBinding::prefer;

  bool operator==(const ServerTarget& other) const {
    return host == other.host && port == other.port && user == other.user && password == other.password &&
           database == other.database && connect_timeout == other.connect_timeout &&
           max_message_size == other.max_message_size && tls_mode == other.tls_mode &&
           tls_files == other.tls_files && channel_binding == other.channel_binding;
  }
};

class ServerConnection : public pool::Connection {
 public:
  // Connects and authenticates; on failure returns nullptr and sets `error` (never a secret).
  static net::awaitable<std::unique_ptr<ServerConnection>> connect(
      net::asio::any_io_executor executor, std::shared_ptr<const ServerTarget> target, std::string& error);
  ~ServerConnection() override;

  net::Stream& stream() { return stream_; }
  // Unique per connection for the life of the process (tells whether a client moved).
  std::uint64_t id() const { return id_; }
  ServerStatements& statements() { return statements_; }
  net::MessageBuffer& buffer() { return buffer_; }
  const ServerTarget& target() const { return *target_; }
  // Where this connection was opened to (a reload may have pointed the service elsewhere since).
  const std::shared_ptr<const ServerTarget>& shared_target() const { return target_; }
  // The key this connection's backend gave us, for forwarding CancelRequests.
  protocol::BackendKeyData backend_key() const { return key_; }
  std::uint32_t server_id() const override { return key_.process_id; }
  // What the server reported through ParameterStatus, kept current by whoever relays its messages.
  ParameterMap& parameters() { return parameters_; }
  const ParameterMap& parameters() const { return parameters_; }
  // What the server reported right after startup.
  const ParameterMap& initial_parameters() const { return initial_parameters_; }

  // Makes the server's session parameters match `wanted` (startup parameters and reported values a
  // client caused) with set_config, pipelined in one round trip. Parameters the server rejects are
  // skipped. Returns false when the connection is no longer usable or has not answered within
  // `timeout` (a hung server).
  net::awaitable<bool> apply_parameters(const ParameterMap& wanted, std::chrono::milliseconds timeout);
  // Runs one simple query whose results are discarded (DISCARD ALL, health check). False on any
  // error or if the server did not end idle.
  net::awaitable<bool> run_discarding(std::string_view sql);
  // The same, failing (false) if the server has not answered within `timeout`.
  net::awaitable<bool> run_discarding(std::string_view sql, std::chrono::milliseconds timeout);
  // After DISCARD ALL / RESET ALL: what pgsluice had applied is gone.
  void forget_applied_parameters() {
    applied_.clear();
    applied_fingerprint_.clear();
  }
  // The exact parameter set (see parameter_fingerprint) this connection was last made to match, so
  // that the next client with the same set costs a string compare instead of a map walk. Cleared
  // whenever the server reports a change.
  const std::string& applied_fingerprint() const { return applied_fingerprint_; }
  // A client changed a setting on this connection itself (SET, RESET): it now carries `value`
  // (nullopt: the setting does not exist), and the next client that did not ask for it gets it reset.
  void note_applied(const std::string& name, const std::optional<std::string>& value);
  void set_applied_fingerprint(std::string fingerprint) { applied_fingerprint_ = std::move(fingerprint); }
  // A look at an idle connection's socket without a round trip: false when the server closed it or
  // sent something (an idle server sends nothing but a FATAL before it goes, e.g. after
  // pg_terminate_backend).
  bool looks_usable() override;
  // Sends Terminate and closes the socket.
  void close();
  // Re-homes the socket on `executor`'s worker, so that its I/O completes on the leasing session's
  // thread without a hop (two epoll_ctl calls). Only while nothing is pending on it (a lease).
  // False if the socket could not be moved (it is then closed: the connection is not reusable).
  // `worker` is pool::context_key(executor); `home` becomes it.
  bool move_to(const net::asio::any_io_executor& executor, const void* worker);

 private:
  ServerConnection(net::tcp::socket socket, std::shared_ptr<const ServerTarget> target);
  // SSLRequest and the TLS handshake, as the target's tls_mode says.
  net::awaitable<bool> negotiate_tls(std::string& error);
  net::awaitable<bool> startup(std::string& error);
  net::awaitable<bool> authenticate(const protocol::Authentication& request, std::string& error);
  // Reads messages until `ready_count` ReadyForQuery messages have arrived, updating parameters.
  // Counts errors into `errors`. False if the connection broke.
  net::awaitable<bool> drain_until_ready(int ready_count, int& errors, char& status);

  net::Stream stream_;
  std::shared_ptr<const ServerTarget> target_;
  std::uint64_t id_;
  ServerStatements statements_;
  net::MessageBuffer buffer_;
  protocol::BackendKeyData key_;
  ParameterMap parameters_;
  // What the server reported right after startup: the values a client that did not ask for
  // anything must see, whoever used the connection before.
  ParameterMap initial_parameters_;
  // Values pgsluice set on this connection for parameters the server does not report.
  ParameterMap applied_;
  std::string applied_fingerprint_;
  bool channel_bound_ = false;  // the login's SCRAM exchange was bound to the TLS session
};

// SSLRequest and the TLS handshake on a new connection to `target`, as its tls_mode says: true
// when the stream may go on (encrypted, or plain under `prefer` or `disable`).
net::awaitable<bool> negotiate_tls(net::Stream& stream, const ServerTarget& target, std::string& error);

// Sends a CancelRequest for `key` on a new connection to `target` (docs §55.2.7).
net::awaitable<void> send_cancel(net::asio::any_io_executor executor, ServerTarget target,
                                 protocol::BackendKeyData key);

}  // namespace pgsluice::server

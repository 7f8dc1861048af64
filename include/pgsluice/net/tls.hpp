#pragma once
// TLS contexts (OpenSSL): one for accepting clients (top-level `tls:`), one per backend for
// connecting to Postgres (`backends.<name>.tls`), built from certificate files. A reload builds
// new ones from the files as they are then (rotated certificates), and a TlsSource hands the
// current one to new connections while connections that started with the old one keep it.
// OpenSSL's headers stay in tls.cpp and stream.cpp.
#include <memory>
#include <mutex>
#include <string>

struct ssl_ctx_st;
struct ssl_method_st;

namespace pgsluice::net {

// What clients may do: `disable` answers SSLRequest 'N'; `allow` accepts TLS and plain text;
// `require` refuses plain text (28000).
enum class ClientTlsMode { disable, allow, require };
// Towards Postgres, with libpq's sslmode meanings: `prefer` uses TLS when the server offers it;
// `require` insists on TLS (and verifies the certificate when a `ca` is given, as libpq does with a
// root certificate); `verify-ca` checks the chain; `verify-full` also the host name.
enum class ServerTlsMode { disable, prefer, require, verify_ca, verify_full };

// The first OpenSSL error queued, as text (the queue is cleared); empty when none.
std::string tls_error_text();

const char* to_string(ClientTlsMode mode);
const char* to_string(ServerTlsMode mode);

struct TlsFiles {
  std::string cert;  // PEM certificate (chain); for clients: required
  std::string key;   // PEM private key of cert
  std::string ca;    // PEM CA certificates: the servers' issuer (towards Postgres), or the clients'
  std::string min_version = "TLSv1.2";  // TLSv1.2 or TLSv1.3
  std::string ciphers;                  // OpenSSL cipher list for TLS 1.2 (empty: OpenSSL's default)

  bool operator==(const TlsFiles&) const = default;
};

class TlsContext {
 public:
  // For accepting clients: `cert` and `key` are required. With a `ca`, a client certificate is
  // asked for and, when one is presented, verified against it. ALPN "postgresql" is selected when
  // offered (Postgres 17's direct TLS sends it; another protocol is refused).
  static std::shared_ptr<const TlsContext> for_clients(const TlsFiles& files, std::string& error);
  // For connecting to Postgres: verification as `mode` says; `cert`/`key` are a client certificate
  // to present (optional).
  static std::shared_ptr<const TlsContext> for_servers(ServerTlsMode mode, const TlsFiles& files, std::string& error);

  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  ~TlsContext();

  ssl_ctx_st* native() const { return ctx_; }
  ServerTlsMode server_mode() const { return server_mode_; }

 private:
  explicit TlsContext(ssl_ctx_st* ctx) : ctx_(ctx) {}
  // A context of `method` with the options both sides share, min_version and ciphers.
  static std::shared_ptr<TlsContext> create(const ssl_method_st* method, const TlsFiles& files, std::string& error);
  ssl_ctx_st* ctx_;
  ServerTlsMode server_mode_ = ServerTlsMode::disable;
};

// The context new connections of one side use now; a reload replaces it.
class TlsSource {
 public:
  std::shared_ptr<const TlsContext> get() const {
    std::lock_guard lock(mutex_);
    return context_;
  }
  void set(std::shared_ptr<const TlsContext> context) {
    std::lock_guard lock(mutex_);
    context_ = std::move(context);
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const TlsContext> context_;
};

}  // namespace pgsluice::net

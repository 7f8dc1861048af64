#include "pgsluice/net/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstring>

namespace pgsluice::net {

std::string tls_error_text() {
  std::string out;
  unsigned long code;
  while ((code = ERR_get_error()) != 0) {
    if (out.empty()) {
      char text[256];
      ERR_error_string_n(code, text, sizeof text);
      out = text;
    }
  }
  return out;
}

namespace {

std::string openssl_error() {
  auto text = tls_error_text();
  return text.empty() ? std::string("unknown OpenSSL error") : text;
}

bool set_min_version(SSL_CTX* ctx, const std::string& version, std::string& error) {
  int v = 0;
  if (version.empty() || version == "TLSv1.2") {
    v = TLS1_2_VERSION;
  } else if (version == "TLSv1.3") {
    v = TLS1_3_VERSION;
  } else {
    error = "min_version must be TLSv1.2 or TLSv1.3, not \"" + version + "\"";
    return false;
  }
  SSL_CTX_set_min_proto_version(ctx, v);
  return true;
}

// Options both sides share: no compression, no renegotiation, read-ahead (one recv per burst of
// records rather than two per record), and writes that may be retried from a moved buffer.
void common_options(SSL_CTX* ctx) {
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_read_ahead(ctx, 1);
}

constexpr unsigned char kAlpnPostgres[] = {10, 'p', 'o', 's', 't', 'g', 'r', 'e', 's', 'q', 'l'};

// Selects "postgresql" when the client offers it; a client offering only other protocols is
// refused (as Postgres 17 does); no ALPN at all is fine for the SSLRequest path.
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
                void*) {
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kAlpnPostgres, sizeof kAlpnPostgres, in, inlen) ==
      OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

}  // namespace

const char* to_string(ClientTlsMode mode) {
  switch (mode) {
    case ClientTlsMode::disable: return "disable";
    case ClientTlsMode::allow: return "allow";
    case ClientTlsMode::require: return "require";
  }
  return "disable";
}

const char* to_string(ServerTlsMode mode) {
  switch (mode) {
    case ServerTlsMode::disable: return "disable";
    case ServerTlsMode::prefer: return "prefer";
    case ServerTlsMode::require: return "require";
    case ServerTlsMode::verify_ca: return "verify-ca";
    case ServerTlsMode::verify_full: return "verify-full";
  }
  return "disable";
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

std::shared_ptr<TlsContext> TlsContext::create(const ssl_method_st* method, const TlsFiles& files, std::string& error) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(method);
  if (ctx == nullptr) {
    error = "cannot create a TLS context: " + openssl_error();
    return nullptr;
  }
  std::shared_ptr<TlsContext> out(new TlsContext(ctx));
  common_options(ctx);
  if (!set_min_version(ctx, files.min_version, error)) return nullptr;
  if (!files.ciphers.empty() && SSL_CTX_set_cipher_list(ctx, files.ciphers.c_str()) != 1) {
    error = "ciphers \"" + files.ciphers + "\": " + openssl_error();
    return nullptr;
  }
  return out;
}

std::shared_ptr<const TlsContext> TlsContext::for_clients(const TlsFiles& files, std::string& error) {
  auto out = create(TLS_server_method(), files, error);
  if (!out) return nullptr;
  SSL_CTX* ctx = out->ctx_;
  if (files.cert.empty() || files.key.empty()) {
    error = "cert and key are required to accept TLS clients";
    return nullptr;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1) {
    error = "cert " + files.cert + ": " + openssl_error();
    return nullptr;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1) {
    error = "key " + files.key + ": " + openssl_error();
    return nullptr;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    error = "key " + files.key + " does not match cert " + files.cert;
    return nullptr;
  }
  if (!files.ca.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1) {
      error = "ca " + files.ca + ": " + openssl_error();
      return nullptr;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  }
  // Sessions are not resumed: every login authenticates anyway, and a cache would be shared state.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, nullptr);
  return out;
}

std::shared_ptr<const TlsContext> TlsContext::for_servers(ServerTlsMode mode, const TlsFiles& files, std::string& error) {
  auto out = create(TLS_client_method(), files, error);
  if (!out) return nullptr;
  out->server_mode_ = mode;
  SSL_CTX* ctx = out->ctx_;
  if (files.cert.empty() != files.key.empty()) {
    error = "cert and key go together (a client certificate and its key)";
    return nullptr;
  }
  if (!files.cert.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1) {
      error = "cert " + files.cert + ": " + openssl_error();
      return nullptr;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      error = "key " + files.key + ": " + openssl_error();
      return nullptr;
    }
  }
  const bool verify = mode == ServerTlsMode::verify_ca || mode == ServerTlsMode::verify_full ||
                      (mode == ServerTlsMode::require && !files.ca.empty());
  if (verify) {
    if (files.ca.empty()) {
      error = std::string("tls.mode ") + to_string(mode) + " needs a ca (the server certificate's issuer)";
      return nullptr;
    }
    if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1) {
      error = "ca " + files.ca + ": " + openssl_error();
      return nullptr;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  SSL_CTX_set_alpn_protos(ctx, kAlpnPostgres, sizeof kAlpnPostgres);
  return out;
}

}  // namespace pgsluice::net

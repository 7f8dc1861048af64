// Loading the YAML config (DESIGN §5): the schema (keys, defaults, ranges) walked section by
// section, then the checks that span sections (references, duplicate matches, the connection
// budget of each backend). Every problem is collected with its line; nothing is logged here.
#include <algorithm>
#include <fstream>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <set>
#include <optional>
#include <sstream>
#include <system_error>
#include <utility>

#include "pgsluice/config/config.hpp"
#include "yaml_section.hpp"

#include <yaml-cpp/eventhandler.h>

namespace pgsluice::config {

namespace {

using detail::Entry;
using detail::LoadContext;
using detail::Section;

constexpr int kMaxWorkers = 1024;
constexpr std::uint64_t kMinMessageSize = 1024;
// Postgres itself never sends or accepts a message over 1 GiB (PQ_LARGE_MESSAGE_LIMIT).
constexpr std::uint64_t kMaxMessageSize = std::uint64_t{1} << 30;

bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

// What Postgres stores in pg_authid for md5: "md5" + md5(password || user) in lowercase hex.
bool is_md5_hash(const std::string& text) {
  return text.size() == 35 && text.starts_with("md5") && std::all_of(text.begin() + 3, text.end(), is_hex);
}

// Strict base64 (with padding); the decoded length, or -1.
long base64_decoded_length(std::string_view text) {
  if (text.empty() || text.size() % 4 != 0) return -1;
  std::size_t padding = 0;
  if (text.ends_with("==")) {
    padding = 2;
  } else if (text.ends_with('=')) {
    padding = 1;
  }
  for (std::size_t i = 0; i < text.size() - padding; ++i) {
    const char c = text[i];
    const bool ok =
        (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
    if (!ok) return -1;
  }
  return static_cast<long>(text.size() / 4 * 3 - padding);
}

// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>", the form pg_authid.rolpassword
// holds (Postgres docs §55.3, RFC 7677); StoredKey and ServerKey are SHA-256 sized.
bool is_scram_verifier(std::string_view text) {
  constexpr std::string_view kPrefix = "SCRAM-SHA-256$";
  if (!text.starts_with(kPrefix)) return false;
  text.remove_prefix(kPrefix.size());
  const auto dollar = text.find('$');
  if (dollar == std::string_view::npos) return false;
  const std::string_view iterations_and_salt = text.substr(0, dollar);
  const std::string_view keys = text.substr(dollar + 1);

  const auto colon = iterations_and_salt.find(':');
  if (colon == std::string_view::npos) return false;
  const std::string_view iterations = iterations_and_salt.substr(0, colon);
  if (iterations.empty() || iterations.size() > 9 || iterations.front() == '0' ||
      !std::all_of(iterations.begin(), iterations.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  if (base64_decoded_length(iterations_and_salt.substr(colon + 1)) <= 0) return false;

  const auto key_colon = keys.find(':');
  if (key_colon == std::string_view::npos) return false;
  return base64_decoded_length(keys.substr(0, key_colon)) == 32 &&
         base64_decoded_length(keys.substr(key_colon + 1)) == 32;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names)
    out += (out.empty() ? "" : ", ") + name;
  return out;
}

// Lines of the values the cross-section checks point at, kept beside Config::services.
struct ServiceLines {
  int backend = 0;
  int match = 0;
  int match_user = 0;
  bool sizes_ok = true;  // max/min parsed, so the allocation sum means something
};

class Loader {
 public:
  explicit Loader(const std::map<std::string, std::string>* env) { context_.env = env; }

  LoadResult load(const YAML::Node& root) {
    Section top(context_, root, "", 1,
                {"listen", "workers", "client_login_timeout", "shutdown_timeout", "max_client_connections",
                 "max_message_size", "max_prepared_statements_per_client",
                 "max_prepared_statement_bytes_per_client", "replicas", "log", "metrics", "admin", "tls", "backends", "users", "services"});
    read_settings(top);
    read_backends(top);
    read_users(top);
    read_services(top);
    check_references();
    check_duplicate_matches();
    check_allocation();
    return finish();
  }

  void add_error(int line, std::string message) { context_.errors.add(line, std::move(message)); }

  LoadResult finish() {
    LoadResult result;
    result.errors = context_.errors.take_sorted();
    if (result.errors.empty()) result.config = std::move(config_);
    return result;
  }

 private:
  void read_settings(const Section& top) {
    top.read_endpoint("listen", config_.listen);
    top.read("workers", config_.workers, 0, kMaxWorkers);
    top.read_duration("client_login_timeout", config_.client_login_timeout, /*allow_zero=*/false);
    top.read_duration("shutdown_timeout", config_.shutdown_timeout, /*allow_zero=*/true);
    top.read("max_client_connections", config_.max_client_connections, 1);
    top.read_byte_size("max_message_size", config_.max_message_size, kMinMessageSize, kMaxMessageSize);
    top.read("max_prepared_statements_per_client", config_.max_prepared_statements_per_client, 1);
    top.read_byte_size("max_prepared_statement_bytes_per_client", config_.max_prepared_statement_bytes_per_client,
                       kMinMessageSize, kMaxMessageSize);
    replicas_ok_ = top.read("replicas", config_.replicas, 1);

    const Section log = top.child("log", {"level", "format", "slow_statements"});
    std::string level;
    if (log.has("level") && log.read("level", level)) {
      static const std::vector<std::string> kLevels = {"trace", "debug",    "info", "warn",
                                                       "error", "critical", "off"};
      if (std::find(kLevels.begin(), kLevels.end(), level) != kLevels.end()) {
        config_.log_level = level;
      } else {
        log.error("level", "\"" + level + "\" is not one of " + join_names(kLevels));
      }
    }
    log.read_choice<LogFormat>("format", config_.log_format,
                               {{"text", LogFormat::text}, {"json", LogFormat::json}});
    log.read_duration("slow_statements", config_.log_slow_statements, /*allow_zero=*/true);

    const Section metrics = top.child("metrics", {"listen", "enabled"});
    metrics.read_endpoint("listen", config_.metrics_listen);
    metrics.read("enabled", config_.metrics_enabled);

    const Section tls = top.child("tls", {"mode", "cert", "key", "ca", "min_version", "ciphers"});
    config_.tls.line = tls.line();
    tls.read_choice<ClientTls>("mode", config_.tls.mode,
                               {{"disable", ClientTls::disable}, {"allow", ClientTls::allow}, {"require", ClientTls::require}});
    read_tls_files(tls, config_.tls.files);
    if (config_.tls.mode != ClientTls::disable && (config_.tls.files.cert.empty() || config_.tls.files.key.empty())) {
      tls.error("mode", "accepting TLS clients needs cert and key");
    }

    const Section admin = top.child("admin", {"users"});
    admin.read_list("users", admin_users_);
    for (const auto& [name, line] : admin_users_)
      config_.admin_users.push_back(name);
  }

  void read_backends(const Section& top) {
    const Entry* section = top.find("backends");
    if (section == nullptr) {
      add_error(0, "backends: at least one backend is required");
      return;
    }
    const auto entries =
        detail::mapping_entries(section->value, "backends", section->key_line, context_.errors);
    if (entries.empty() && (section->value.IsNull() || section->value.IsMap())) {
      add_error(section->key_line, "backends: at least one backend is required");
    }
    for (const auto& entry : entries) {
      const Section s(
          context_, entry.value, "backends." + entry.key, entry.key_line,
          {"host", "port", "max_connections", "reserved_connections", "connect_timeout", "breaker", "tls"});
      BackendConfig backend;
      backend.name = entry.key;
      backend.line = entry.key_line;
      s.read("host", backend.host);
      s.read_port("port", backend.port);
      bool sizes_ok = s.read("max_connections", backend.max_connections, 1);
      sizes_ok = s.read("reserved_connections", backend.reserved_connections, 0) && sizes_ok;
      if (!sizes_ok) backends_with_bad_sizes_.insert(entry.key);
      s.read_duration("connect_timeout", backend.connect_timeout, /*allow_zero=*/false);

      const Section breaker = s.child("breaker", {"failure_threshold", "open_for", "max_open_for"});
      breaker.read("failure_threshold", backend.breaker.failure_threshold, 1);
      const bool open_ok = breaker.read_duration("open_for", backend.breaker.open_for, /*allow_zero=*/false);
      const bool max_ok = breaker.read_duration("max_open_for", backend.breaker.max_open_for, false);
      if (open_ok && max_ok && backend.breaker.max_open_for < backend.breaker.open_for) {
        breaker.error(breaker.has("max_open_for") ? "max_open_for" : "open_for",
                      "max_open_for must not be shorter than open_for (open_for doubles up to max_open_for)");
      }
      const Section tls =
          s.child("tls", {"mode", "cert", "key", "ca", "min_version", "ciphers", "channel_binding"});
      backend.tls.line = tls.line();
      tls.read_choice<ServerTls>("mode", backend.tls.mode,
                                 {{"disable", ServerTls::disable},
                                  {"prefer", ServerTls::prefer},
                                  {"require", ServerTls::require},
                                  {"verify-ca", ServerTls::verify_ca},
                                  {"verify-full", ServerTls::verify_full}});
      tls.read_choice<ChannelBinding>("channel_binding", backend.tls.channel_binding,
                                      {{"disable", ChannelBinding::disable},
                                       {"prefer", ChannelBinding::prefer},
                                       {"require", ChannelBinding::require}});
      if (backend.tls.channel_binding == ChannelBinding::require && backend.tls.mode == ServerTls::disable) {
        tls.error("channel_binding", "require needs TLS towards the server (mode is disable)");
      }
      read_tls_files(tls, backend.tls.files);
      if ((backend.tls.mode == ServerTls::verify_ca || backend.tls.mode == ServerTls::verify_full) &&
          backend.tls.files.ca.empty()) {
        tls.error("mode", "verify-ca and verify-full need a ca (the server certificate's issuer)");
      }
      if (backend.tls.files.cert.empty() != backend.tls.files.key.empty()) {
        tls.error(backend.tls.files.cert.empty() ? "key" : "cert", "cert and key go together");
      }
      config_.backends.emplace(entry.key, std::move(backend));
    }
  }

  // cert, key, ca: readable files; min_version; ciphers (checked by OpenSSL when loaded).
  static void read_tls_files(const Section& tls, TlsFilesConfig& files) {
    for (auto [key, out] : {std::pair<std::string_view, std::string*>{"cert", &files.cert},
                            {"key", &files.key},
                            {"ca", &files.ca}}) {
      if (!tls.has(key) || !tls.read(key, *out)) continue;
      if (!std::ifstream(*out).good()) {
        tls.error(key, "cannot read " + *out);
        out->clear();
      }
    }
    std::string version;
    if (tls.has("min_version") && tls.read("min_version", version)) {
      if (version == "TLSv1.2" || version == "TLSv1.3") {
        files.min_version = version;
      } else {
        tls.error("min_version", "\"" + version + "\" is not one of TLSv1.2, TLSv1.3");
      }
    }
    if (tls.has("ciphers")) tls.read("ciphers", files.ciphers);
  }

  void read_users(const Section& top) {
    const Entry* section = top.find("users");
    if (section == nullptr) return;
    for (const auto& entry :
         detail::mapping_entries(section->value, "users", section->key_line, context_.errors)) {
      const Section s(context_, entry.value, "users." + entry.key, entry.key_line,
                      {"password", "scram_verifier", "md5_hash", "auth"});
      UserConfig user;
      user.name = entry.key;
      user.line = entry.key_line;
      s.read_choice<AuthMethod>("auth", user.auth,
                                {{"scram-sha-256", AuthMethod::scram_sha_256},
                                 {"md5", AuthMethod::md5},
                                 {"trust", AuthMethod::trust}});
      s.read_secret("password", user.password);
      s.read_secret("scram_verifier", user.scram_verifier);
      s.read_secret("md5_hash", user.md5_hash);
      // Shapes are checked on the resolved value; the message must not show it.
      if (user.scram_verifier && !is_scram_verifier(*user.scram_verifier)) {
        s.error("scram_verifier",
                "is not a SCRAM verifier; expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> "
                "as in pg_authid");
      }
      if (user.md5_hash && !is_md5_hash(*user.md5_hash)) {
        s.error("md5_hash", "is not an md5 hash; expected \"md5\" followed by 32 lowercase hex digits");
      }
      check_user_secrets(s, user);
      config_.users.emplace(entry.key, std::move(user));
    }
  }

  // Which secret each auth method can work with (DESIGN §2): SCRAM needs the password or a
  // verifier, md5 needs the password or the md5 hash, trust needs nothing.
  void check_user_secrets(const Section& s, const UserConfig& user) {
    std::vector<std::string> given;
    for (const char* key : {"password", "scram_verifier", "md5_hash"}) {
      if (s.has(key)) given.emplace_back(key);
    }
    if (given.size() > 1) {
      s.error(given[1], "give only one of password, scram_verifier and md5_hash (both " + given[0] + " and " +
                            given[1] + " are set)");
      return;
    }
    switch (user.auth) {
      case AuthMethod::scram_sha_256:
        if (s.has("md5_hash")) {
          s.error("md5_hash", "cannot be used with auth scram-sha-256; give password or scram_verifier");
        } else if (given.empty()) {
          s.error("auth scram-sha-256 needs password or scram_verifier");
        }
        break;
      case AuthMethod::md5:
        if (s.has("scram_verifier")) {
          s.error("scram_verifier", "cannot be used with auth md5; give password or md5_hash");
        } else if (given.empty()) {
          s.error("auth md5 needs password or md5_hash");
        }
        break;
      case AuthMethod::trust:
        if (!given.empty()) s.error(given[0], "auth trust takes no password; remove it or change auth");
        break;
    }
  }

  void read_services(const Section& top) {
    const Entry* section = top.find("services");
    if (section == nullptr) {
      add_error(0, "services: at least one service is required");
      return;
    }
    const auto entries =
        detail::mapping_entries(section->value, "services", section->key_line, context_.errors);
    if (entries.empty() && (section->value.IsNull() || section->value.IsMap())) {
      add_error(section->key_line, "services: at least one service is required");
    }
    for (const auto& entry : entries)
      read_service(entry);
  }

  void read_service(const Entry& entry) {
    const Section s(
        context_, entry.value, "services." + entry.key, entry.key_line,
        {"backend", "match", "server_user", "server_password", "server_database", "mode", "max_connections",
         "min_connections", "acquire_timeout", "max_waiting_clients", "idle_timeout", "max_lifetime",
         "health_check_after_idle", "query_timeout", "idle_in_transaction_timeout", "coalesce"});
    ServiceConfig service;
    ServiceLines lines;
    service.name = entry.key;
    service.line = entry.key_line;

    if (s.has("backend")) {
      s.read("backend", service.backend);
      lines.backend = s.line_at("backend");
    } else if (config_.backends.size() == 1) {
      service.backend = config_.backends.begin()->first;
    } else if (config_.backends.size() > 1) {
      s.error("backend is required when more than one backend is defined");
    }

    if (!s.has("match")) {
      s.error("match is required, e.g. match: { user: feed_service, database: nova }");
    } else {
      const Section match = s.child("match", {"user", "database"});
      lines.match = match.line();
      lines.match_user = match.line_at("user");
      for (const char* key : {"user", "database"}) {
        if (!match.has(key)) match.error(std::string(key) + " is required");
      }
      match.read("user", service.match_user);
      match.read("database", service.match_database);
    }
    service.server_user = service.match_user;
    service.server_database = service.match_database;
    s.read("server_user", service.server_user);
    s.read_secret("server_password", service.server_password);
    s.read("server_database", service.server_database);
    s.read_choice<PoolMode>("mode", service.mode,
                            {{"session", PoolMode::session},
                             {"transaction", PoolMode::transaction},
                             {"statement", PoolMode::statement}});

    const bool max_ok = s.read("max_connections", service.max_connections, 1);
    const bool min_ok = s.read("min_connections", service.min_connections, 0);
    lines.sizes_ok = max_ok && min_ok;
    if (lines.sizes_ok && service.min_connections > service.max_connections) {
      s.error("min_connections", "must not exceed max_connections (" +
                                     std::to_string(service.min_connections) + " > " +
                                     std::to_string(service.max_connections) + ")");
    }
    s.read_duration("acquire_timeout", service.acquire_timeout, /*allow_zero=*/false);
    s.read("max_waiting_clients", service.max_waiting_clients, 0);
    s.read_duration("idle_timeout", service.idle_timeout, /*allow_zero=*/true);
    s.read_duration("max_lifetime", service.max_lifetime, /*allow_zero=*/true);
    s.read_duration("health_check_after_idle", service.health_check_after_idle, /*allow_zero=*/true);
    s.read_duration("query_timeout", service.query_timeout, /*allow_zero=*/true);
    s.read_duration("idle_in_transaction_timeout", service.idle_in_transaction_timeout, /*allow_zero=*/true);

    const Section coalesce = s.child("coalesce", {"enabled", "max_batch", "window", "allow_views"});
    coalesce.read("enabled", service.coalesce.enabled);
    coalesce.read("max_batch", service.coalesce.max_batch, 1);
    coalesce.read_fine_duration("window", service.coalesce.window);
    coalesce.read("allow_views", service.coalesce.allow_views);

    config_.services.push_back(std::move(service));
    service_lines_.push_back(lines);
  }

  void check_references() {
    std::vector<std::string> backend_names;
    for (const auto& [name, backend] : config_.backends)
      backend_names.push_back(name);
    for (std::size_t i = 0; i < config_.services.size(); ++i) {
      const ServiceConfig& service = config_.services[i];
      const ServiceLines& lines = service_lines_[i];
      if (!service.backend.empty() && !config_.backends.contains(service.backend)) {
        add_error(lines.backend, "services." + service.name + ".backend: no backend named \"" +
                                     service.backend + "\" (defined: " + join_names(backend_names) + ")");
      }
      if (!service.match_user.empty() && !config_.users.contains(service.match_user)) {
        add_error(lines.match_user, "services." + service.name + ".match.user: \"" + service.match_user +
                                        "\" is not defined under users");
      }
    }
    for (const auto& [name, line] : admin_users_) {
      if (!config_.users.contains(name)) {
        add_error(line, "admin.users: \"" + name + "\" is not defined under users");
      }
    }
  }

  // A client's (user, database) must pick exactly one service.
  void check_duplicate_matches() {
    std::map<std::pair<std::string, std::string>, std::size_t> first_by_match;
    for (std::size_t i = 0; i < config_.services.size(); ++i) {
      const ServiceConfig& service = config_.services[i];
      if (service.match_user.empty() || service.match_database.empty()) continue;
      const auto [it, inserted] =
          first_by_match.emplace(std::pair(service.match_user, service.match_database), i);
      if (inserted) continue;
      const ServiceConfig& first = config_.services[it->second];
      add_error(service_lines_[i].match, "services." + service.name + ".match: services " + first.name +
                                             " (line " + std::to_string(first.line) + ") and " +
                                             service.name + " both match user " + service.match_user +
                                             " and database " + service.match_database +
                                             "; a client must pick exactly one service");
    }
  }

  // The review's rule: what every pgsluice instance may open, plus what is kept back for
  // superusers, replication, backups and migrations, must fit the server's max_connections.
  void check_allocation() {
    if (!replicas_ok_) return;
    for (const auto& [name, backend] : config_.backends) {
      if (backends_with_bad_sizes_.contains(name)) continue;
      std::int64_t total = backend.reserved_connections;
      bool sizes_ok = true;
      for (std::size_t i = 0; i < config_.services.size(); ++i) {
        if (config_.services[i].backend != name) continue;
        sizes_ok = sizes_ok && service_lines_[i].sizes_ok;
        total += std::int64_t{config_.services[i].max_connections} * config_.replicas;
      }
      if (!sizes_ok || total <= backend.max_connections) continue;
      add_error(backend.line,
                "backends." + name +
                    ": the services' max_connections x replicas plus reserved_connections come to " +
                    std::to_string(total) + ", over the server's max_connections " +
                    std::to_string(backend.max_connections) + " by " +
                    std::to_string(total - backend.max_connections) +
                    "; lower some services' max_connections, replicas or reserved_connections, or raise "
                    "max_connections on the server and here:\n" +
                    allocation_table(config_, name));
    }
  }

  LoadContext context_;
  Config config_;
  std::vector<ServiceLines> service_lines_;  // parallel to config_.services
  std::vector<std::pair<std::string, int>> admin_users_;
  std::set<std::string> backends_with_bad_sizes_;
  bool replicas_ok_ = true;
};

int mark_line(const YAML::Mark& mark) {
  return mark.line < 0 ? 0 : mark.line + 1;
}

// Counts a text's YAML documents without building them, and where the second one starts.
class DocumentCounter : public YAML::EventHandler {
 public:
  int count = 0;
  int second_line = 0;  // the line of the second document's first node
  void OnDocumentStart(const YAML::Mark&) override { ++count; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override {
    node(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnMapEnd() override {}

 private:
  void node(const YAML::Mark& mark) {
    if (count == 2 && second_line == 0) second_line = mark_line(mark);
  }
};

struct DocumentCount {
  int count = 0;
  int second_line = 0;
};

// nullopt when the parser does not come to an end within one document per byte (and one more).
std::optional<DocumentCount> count_documents(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentCounter counter;
  for (std::size_t rounds = 0; parser.HandleNextDocument(counter);) {
    if (++rounds > text.size() + 1) return std::nullopt;
  }
  return DocumentCount{counter.count, counter.second_line};
}

}  // namespace

LoadResult load_from_string(const std::string& yaml_text, const std::map<std::string, std::string>* env) {
  Loader loader(env);
  try {
    // The documents are counted by the parser's events, the first one loaded alone: yaml-cpp 0.7's
    // LoadAll never ends on some malformed texts (a leading ",": jbeder/yaml-cpp#1040, found by
    // tests/fuzz/fuzz_config.cpp) and would take the daemon's memory on a reload.
    const auto documents = count_documents(yaml_text);
    if (!documents) {
      return LoadResult{std::nullopt, {ConfigError{1, "YAML syntax error: the text does not parse as YAML"}}};
    }
    if (documents->count > 1) {
      loader.add_error(documents->second_line,
                       "the file holds more than one YAML document (---); put the whole configuration in one");
      return loader.finish();
    }
    const YAML::Node root = documents->count == 0 ? YAML::Node() : YAML::Load(yaml_text);
    if (!root.IsNull() && !root.IsMap()) {
      loader.add_error(detail::line_of(root),
                       "the configuration must be a mapping of keys such as listen, backends and services");
      return loader.finish();
    }
    return loader.load(root);
  } catch (const YAML::Exception& error) {
    // Syntax errors carry the position; yaml-cpp's texts describe the structure, not the content.
    return LoadResult{std::nullopt, {ConfigError{mark_line(error.mark), "YAML syntax error: " + error.msg}}};
  }
}

LoadResult load_from_file(const std::string& path) {
  const auto unreadable = [&](int error) {
    return LoadResult{
        std::nullopt,
        {ConfigError{0, "cannot read config file " + path + ": " + std::generic_category().message(error)}}};
  };
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return unreadable(errno);
  std::string text;
  char buffer[8192];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, file)) > 0)
    text.append(buffer, n);
  const bool failed = std::ferror(file) != 0;
  const int error = errno;  // e.g. EISDIR: fopen accepts a directory, fread does not
  std::fclose(file);
  if (failed) return unreadable(error);
  return load_from_string(text);
}

const ServiceConfig* Config::find_service(const std::string& user, const std::string& database) const {
  for (const auto& service : services) {
    if (service.match_user == user && service.match_database == database) return &service;
  }
  return nullptr;
}

const char* to_string(PoolMode mode) {
  switch (mode) {
    case PoolMode::session:
      return "session";
    case PoolMode::transaction:
      return "transaction";
    case PoolMode::statement:
      return "statement";
  }
  return "unknown";
}

const char* to_string(AuthMethod method) {
  switch (method) {
    case AuthMethod::scram_sha_256:
      return "scram-sha-256";
    case AuthMethod::md5:
      return "md5";
    case AuthMethod::trust:
      return "trust";
  }
  return "unknown";
}

}  // namespace pgsluice::config

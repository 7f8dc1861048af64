#include "pgsluice/session/session_context.hpp"

#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/md5.hpp"

namespace pgsluice::session {

void Service::remember_reported_parameters(const server::ParameterMap& parameters) {
  auto values = std::make_shared<const server::ParameterMap>(parameters);
  auto messages = std::make_shared<protocol::Buffer>();
  for (const auto& [name, value] : parameters) protocol::append_parameter_status(*messages, name, value);
  std::lock_guard lock(mutex_);
  reported_parameters_ = std::move(values);
  reported_status_messages_ = std::move(messages);
}

std::shared_ptr<Service> Snapshot::find_service(const std::string& user, const std::string& database) const {
  const auto* service = config->find_service(user, database);
  if (service == nullptr) return nullptr;
  auto it = services.find(service->name);
  return it == services.end() ? nullptr : it->second;
}

std::map<std::string, UserSecret> prepare_user_secrets(const config::Config& config) {
  std::map<std::string, UserSecret> out;
  for (const auto& [name, user] : config.users) {
    UserSecret secret;
    secret.method = user.auth;
    if (user.scram_verifier) {
      secret.verifier = protocol::scram::parse_verifier(*user.scram_verifier);
    } else if (user.password && user.auth == config::AuthMethod::scram_sha_256) {
      secret.verifier = protocol::scram::make_verifier(*user.password);
    }
    secret.password = user.password;
    secret.md5_hash = user.md5_hash;
    if (!secret.md5_hash && user.password) secret.md5_hash = protocol::md5::stored_hash(name, *user.password);
    out.emplace(name, std::move(secret));
  }
  return out;
}

}  // namespace pgsluice::session

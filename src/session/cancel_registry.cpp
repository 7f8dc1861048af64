#include "pgsluice/session/cancel_registry.hpp"

#include <cstring>

#include "pgsluice/protocol/scram.hpp"

namespace pgsluice::session {

namespace {
std::uint64_t id_of(std::uint32_t process_id, std::uint32_t secret_key) {
  return (std::uint64_t{process_id} << 32) | secret_key;
}
}  // namespace

CancelRegistry::Key CancelRegistry::add(const std::shared_ptr<ClientSession>& session) {
  for (;;) {
    std::uint8_t random[8];
    protocol::scram::random_fill(random, sizeof random);
    Key key;
    std::memcpy(&key.process_id, random, 4);
    std::memcpy(&key.secret_key, random + 4, 4);
    key.process_id &= 0x7fffffff;  // clients print it as a signed pid
    std::lock_guard lock(mutex_);
    auto [it, inserted] = sessions_.try_emplace(id_of(key.process_id, key.secret_key), session);
    if (inserted) return key;
  }
}

void CancelRegistry::remove(Key key) {
  std::lock_guard lock(mutex_);
  sessions_.erase(id_of(key.process_id, key.secret_key));
}

std::shared_ptr<ClientSession> CancelRegistry::find(Key key) const {
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(id_of(key.process_id, key.secret_key));
  return it == sessions_.end() ? nullptr : it->second.lock();
}

std::vector<std::shared_ptr<ClientSession>> CancelRegistry::sessions() const {
  std::vector<std::shared_ptr<ClientSession>> out;
  std::lock_guard lock(mutex_);
  out.reserve(sessions_.size());
  for (const auto& [key, session] : sessions_) {
    if (auto live = session.lock()) out.push_back(std::move(live));
  }
  return out;
}

std::size_t CancelRegistry::size() const {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}

}  // namespace pgsluice::session

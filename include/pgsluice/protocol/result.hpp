#pragma once
// A small expected-style result for the protocol layer: a value, or the error the client should see.
#include <string>
#include <utility>
#include <variant>

namespace pgsluice::protocol {

// An error with the SQLSTATE a client should receive (DESIGN §7).
struct ProtocolError {
  std::string sqlstate;
  std::string message;
};

template <class T>
class Result {
 public:
  Result(T value) : state_(std::move(value)) {}                 // NOLINT(google-explicit-constructor)
  Result(ProtocolError error) : state_(std::move(error)) {}     // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<0>(state_); }
  const T& value() const { return std::get<0>(state_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }
  [[nodiscard]] const ProtocolError& error() const { return std::get<1>(state_); }

 private:
  std::variant<T, ProtocolError> state_;
};

struct Ok {};
using Status = Result<Ok>;

inline ProtocolError protocol_violation(std::string message) {
  return ProtocolError{"08P01", std::move(message)};
}

}  // namespace pgsluice::protocol

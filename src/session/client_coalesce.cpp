// The session's side of the coalescer (DESIGN §4): which statements it hands over, and how their
// answers reach the client through its one writer.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>

#include "pgsluice/protocol/frontend_messages.hpp"
#include "pgsluice/session/client_session.hpp"

namespace pgsluice::session {

namespace asio = net::asio;
using protocol::Buffer;

struct ClientSession::CoalescedWait {
  std::optional<coalesce::Answer> answer;  // the first of the coalescer's answer and a cancel
  net::Event ready;
  std::shared_ptr<coalesce::Submission> submission;
};

namespace {

// The client's group at the front of its buffer, as the coalescer needs it.
struct Group {
  std::size_t size = 0;
  bool simple = false;
  std::string_view text;
  std::string_view parameter_types;  // Parse's (empty: no Parse in the group)
  bool parses = false;
  std::string_view statement;  // the statement name the group parses / binds
  protocol::Bytes bind_rest;
  coalesce::Steps steps;
};

std::string_view view_of(protocol::Bytes bytes) { return protocol::as_string_view(bytes); }

}  // namespace

bool ClientSession::try_coalesce(std::shared_ptr<ClientSession>& self) {
  if (transaction_status_ != 'I' || skip_until_sync_ || draining_ || closing_ || !rewrite_statements_ ||
      (tracker_ && (!tracker_->idle() || tracker_->pinned() || tracker_->has_unsettled_state()))) {
    return false;
  }
  auto& coalescer = *service_->coalescer;
  // The group: a Query, or Parse? then Describe S / Bind / Describe P (Bind once), Execute, Sync.
  auto data = buffer_.readable();
  if (data.empty()) return false;
  Group group;
  std::size_t at = 0;
  auto next = [&]() -> std::optional<protocol::MessageView> {
    if (at >= data.size()) return std::nullopt;
    auto frame = protocol::next_frame(data.subspan(at), max_message_size_);
    if (frame.status != protocol::FrameStatus::complete) return std::nullopt;
    at += frame.message.frame.size();
    return frame.message;
  };
  auto first = next();
  if (!first) return false;
  if (first->type == 'Q') {
    group.simple = true;
    group.text = view_of(first->payload);
    if (!group.text.empty() && group.text.back() == '\0') group.text.remove_suffix(1);
  } else {
    std::optional<protocol::MessageView> message = first;
    if (message->type == 'P') {
      auto parse = protocol::parse_parse(message->payload);
      if (!parse) return false;
      group.parses = true;
      group.statement = parse->statement;
      group.text = parse->query;
      group.parameter_types = view_of(parse->parameter_types);
      group.steps.order += 'P';
      message = next();
    }
    bool bound = false;
    bool named = group.parses;  // the statement the group uses is known (its Parse, Describe or Bind)
    for (; message; message = next()) {
      const char type = message->type;
      if (type == 'B') {
        auto bind = protocol::parse_bind(message->payload);
        if (!bind || bound || !bind->portal.empty()) return false;
        if (!named) group.statement = bind->statement;
        named = true;
        if (bind->statement != group.statement) return false;
        bound = true;
        group.bind_rest = bind->rest;
        group.steps.order += 'B';
      } else if (type == 'D') {
        auto target = protocol::parse_describe_or_close(message->payload);
        if (!target) return false;
        if (target->kind == 'S') {
          if (!named) group.statement = target->name;  // Describe S, then Bind (pgjdbc, psycopg 3)
          named = true;
          if (target->name != group.statement) return false;
          group.steps.order += 's';
        } else {
          if (!bound || !target->name.empty()) return false;
          group.steps.order += 'p';
        }
      } else if (type == 'E') {
        auto execute = protocol::parse_execute(message->payload);
        if (!execute || !bound || !execute->portal.empty() || execute->max_rows != 0) return false;
        group.steps.order += 'E';
        message = next();
        break;
      } else {
        return false;  // Flush, Close, ...: the usual way
      }
    }
    if (!message || message->type != 'S' || group.steps.order.back() != 'E') return false;
    if (!group.parses) {
      // A statement the client parsed before: its text and types as pgsluice knows them.
      if (!tracker_) return false;
      auto known = tracker_->client_statement(std::string(group.statement));
      if (!known) return false;
      group.text = known->query;
      group.parameter_types = known->parameter_types;
    } else if (!group.statement.empty() &&
               (tracker().client_statement(std::string(group.statement)) || !tracker().has_room_for_statement())) {
      return false;  // a name in use (42P05) or over the limit: the tracker answers it
    }
    if (std::count(group.steps.order.begin(), group.steps.order.end(), 's') > 1 ||
        std::count(group.steps.order.begin(), group.steps.order.end(), 'p') > 1) {
      return false;
    }
  }
  group.size = at;
  if (group.simple && at != first->frame.size()) group.size = first->frame.size();
  if (group.text.empty() || group.text.find('\0') != std::string_view::npos) return false;
  auto analysis = context_->selects.analysis_of(group.text);
  follow_streak(analysis, std::hash<std::string_view>{}(group.simple ? group.text : view_of(group.bind_rest)));
  if (parameters_fingerprint_.empty()) parameters_fingerprint_ = server::parameter_fingerprint(parameters_);
  const std::string text(group.text);
  if (!coalescer.may_take(*analysis, text, parameters_fingerprint_)) return false;
  if (context_->analyzer.effects_of(group.text)) {
    coalescer.count_ineligible("session_state");
    return false;
  }
  auto parts = coalesce::split_bind(group.bind_rest);
  if (!group.simple && !parts) return false;

  auto submission = std::make_shared<coalesce::Submission>();
  submission->simple = group.simple;
  submission->text = text;
  submission->parameter_types.assign(group.parameter_types.empty() && !group.simple ? std::string_view("\0\0", 2)
                                                                                     : group.parameter_types);
  submission->bind_rest.assign(view_of(group.bind_rest));
  submission->values = submission->bind_rest;
  submission->steps = std::move(group.steps);
  submission->steps.statement = std::string(group.statement);
  if (parts) submission->steps.result_formats = parts->result_formats;
  submission->analysis = std::move(analysis);
  submission->parameters = parameters_;
  submission->parameters_fingerprint = parameters_fingerprint_;
  submission->user = user_;
  // Everything that must be equal to share an execution; the values decide whether it is shared
  // or batched.
  auto& key = submission->key;
  key.reserve(text.size() + 64 + parameters_fingerprint_.size());
  key += user_;
  key += '\0';
  key += database_;
  key += '\0';
  key += parameters_fingerprint_;
  key += '\0';
  key += group.simple ? 'Q' : 'X';
  key += text;
  key += '\0';
  key += submission->parameter_types;
  key += '\0';
  if (parts) {
    for (auto code : parts->parameter_formats) key += std::to_string(code) + ",";
    key += '\0';
    for (auto code : parts->result_formats) key += std::to_string(code) + ",";
  }
  asio::co_spawn(stream_.get_executor(),
                 serve_coalesced(std::move(self), std::move(submission), group.size, std::string(group.statement)),
                 asio::detached);
  return true;
}

void ClientSession::follow_streak(const std::shared_ptr<const sql::SelectAnalysis>& analysis, std::size_t values) {
  constexpr auto kWindow = std::chrono::seconds(1);
  constexpr std::uint32_t kLongest = 1000;
  if (analysis->fingerprint.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  if (streak_ && streak_->fingerprint == analysis->fingerprint && now - streak_start_ <= kWindow &&
      streak_count_ < kLongest) {
    if (values != streak_values_) {
      ++streak_count_;
      streak_values_ = values;
      streak_last_ = now;
    }
    return;
  }
  end_streak();
  streak_ = analysis;
  streak_values_ = values;
  streak_count_ = 1;
  streak_start_ = streak_last_ = now;
}

void ClientSession::end_streak() {
  // Ten lookups of one shape with other values within a second, one after the other: likely a
  // loop in the application that one query could answer (an N+1).
  constexpr std::uint32_t kLikelyNPlusOne = 10;
  if (streak_ && streak_count_ >= kLikelyNPlusOne && service_ && service_->coalescer) {
    service_->coalescer->note_n_plus_one(*streak_, streak_count_, streak_last_ - streak_start_);
  }
  streak_.reset();
  streak_count_ = 0;
}

void ClientSession::cancel_coalesced() {
  std::shared_ptr<CoalescedWait> wait;
  {
    std::lock_guard lock(cancel_mutex_);
    wait = coalesced_wait_;
  }
  if (!wait) return;
  asio::post(stream_.get_executor(), [wait] {
    if (wait->answer) return;
    wait->submission->abandoned = true;
    // What Postgres answers a cancelled statement: its steps up to the Execute, then the error.
    coalesce::Outcome outcome;
    outcome.failed_at = coalesce::Outcome::Stage::execute;
    Buffer error;
    protocol::append_error_response(error, protocol::Severity::error, "57014", "canceling statement due to user request");
    outcome.error.assign(error.begin(), error.end());
    coalesce::Answer answer;
    if (wait->submission->simple) {
      outcome.simple_reply = outcome.error;
      Buffer ready;
      protocol::append_ready_for_query(ready, 'I');
      outcome.simple_reply.append(ready.begin(), ready.end());
    }
    // Describes need the statement's description, which is not known here: the error comes first.
    coalesce::Steps steps;
    for (char step : wait->submission->steps.order) {
      if (step == 'P' || step == 'B' || step == 'E') steps.order += step;
      if (step == 'E') break;
    }
    if (!coalesce::render(steps, outcome, answer.bytes)) answer.kind = coalesce::Answer::Kind::bypass;
    wait->answer = std::move(answer);
    wait->ready.notify();
  });
}

net::awaitable<void> ClientSession::serve_coalesced(std::shared_ptr<ClientSession> self,
                                                    std::shared_ptr<coalesce::Submission> submission, std::size_t size,
                                                    std::string statement) {
  auto wait = std::make_shared<CoalescedWait>();
  wait->submission = submission;
  submission->answer = [wait, executor = stream_.get_executor()](coalesce::Answer answer) {
    asio::post(executor, [wait, answer = std::move(answer)]() mutable {
      if (wait->answer) return;  // cancelled meanwhile
      wait->answer = std::move(answer);
      wait->ready.notify();
    });
  };
  {
    std::lock_guard lock(cancel_mutex_);
    coalesced_wait_ = wait;
  }
  const bool simple = submission->simple;
  const bool parses = !submission->steps.order.empty() && submission->steps.order.front() == 'P';
  std::string text = submission->text;
  std::string types = submission->parameter_types;
  service_->coalescer->submit(std::move(submission), stream_.get_executor());
  while (!wait->answer) co_await wait->ready.wait();
  {
    std::lock_guard lock(cancel_mutex_);
    coalesced_wait_.reset();
  }
  wait->submission.reset();  // its callback may still hold `wait` until the coalescer drops it
  // The statement's messages were counted by on_client_data as if sent on: nothing is owed.
  expected_ready_ = 0;
  in_extended_batch_ = false;
  auto& answer = *wait->answer;
  if (answer.kind == coalesce::Answer::Kind::bypass) {
    coalesce_bypass_ = true;
    co_return on_client_data(std::move(self));
  }
  if (closing_ || client_done_) co_return;
  Buffer out;
  if (answer.kind == coalesce::Answer::Kind::failed) {
    auto run = buffer_.readable().subspan(0, size);
    fail_run(run, answer.sqlstate, answer.message, out);
    skip_until_sync_ = false;
  } else {
    out = std::move(answer.bytes);
  }
  if (simple) {
    if (tracker_) tracker_->simple_query_answered_here();
  } else if (parses) {
    const bool parsed = answer.kind == coalesce::Answer::Kind::reply && !out.empty() && out[0] == '1';
    tracker().parsed_here(statement, std::move(text), std::move(types), parsed);
  }
  buffer_.consume(size);
  if (!co_await write_client(out)) co_return end_client();
  flush_notifications();
  if (draining_) co_return co_await close_with("57P01", "pgsluice: shutting down; connect again");
  on_client_data(std::move(self));
}

}  // namespace pgsluice::session

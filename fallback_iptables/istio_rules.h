// istio-iptables' capture rules for a CaptureConfig: the same rules, in the
// same order and spelling, as istio's capture.Run() would restore.
#pragma once

#include <string>

#include "capture_config.h"
#include "rule_builder.h"

namespace meshcap::iptables {

/// Istio's chain names.
inline constexpr const char* kIstioOutput = "ISTIO_OUTPUT";
inline constexpr const char* kIstioOutputDns = "ISTIO_OUTPUT_DNS";
inline constexpr const char* kIstioInbound = "ISTIO_INBOUND";
inline constexpr const char* kIstioDivert = "ISTIO_DIVERT";
inline constexpr const char* kIstioTproxy = "ISTIO_TPROXY";
inline constexpr const char* kIstioRedirect = "ISTIO_REDIRECT";
inline constexpr const char* kIstioInRedirect = "ISTIO_IN_REDIRECT";
inline constexpr const char* kIstioDrop = "ISTIO_DROP";
/// Prefix of every chain istio (and so meshcap) owns.
inline constexpr const char* kIstioChainPrefix = "ISTIO_";

/// The two iptables-restore inputs for one configuration.
struct RulePayloads {
  RestorePayload ipv4;
  RestorePayload ipv6;  // empty when IPv6 is disabled
  bool ipv6_enabled = false;

  /// What `meshcap init --mode iptables --dry-run` prints: the IPv4 payload,
  /// then the IPv6 payload when IPv6 is enabled.
  std::string dry_run_output() const;
};

/// Builds istio's capture rules for `cfg` (IPv6 rules only when
/// `ipv6_enabled`, istio's ENABLE_INBOUND_IPV6; meshcap passes --dual-stack).
/// Throws UsageError for a wildcard -x, which istio rejects too.
RuleBuilder build_istio_rules(const CaptureConfig& cfg, bool ipv6_enabled);

/// The iptables-restore payloads istio-iptables would apply for `cfg`,
/// byte-identical to istio's (see build_istio_rules).
RulePayloads render_istio_rules(const CaptureConfig& cfg, bool ipv6_enabled);

/// True when istio also sets up TPROXY policy routing for `cfg`
/// (TPROXY mode with a non-empty -b).
bool needs_tproxy_routes(const CaptureConfig& cfg);

/// Whether the DNS rules are on (see capture_config.h).
using meshcap::dns_redirect_active;

}  // namespace meshcap::iptables

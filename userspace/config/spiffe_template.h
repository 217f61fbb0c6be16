// SPIFFE ID templates, shared by the registry and the configuration check.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/config/registry.h"

namespace ktrust::config_internal {

// Refuses unknown, unterminated and stray placeholders.
absl::Status CheckTemplate(absl::string_view tmpl);

bool TemplateUsesUnit(absl::string_view tmpl);

// RenderSpiffeId, with {unit} taken from `unit` when it is not null instead
// of from the cgroup path: the configuration check renders sample values.
absl::StatusOr<SpiffeId> RenderSpiffeId(absl::string_view tmpl, const TemplateValues& values,
                                        const std::string* unit);

}  // namespace ktrust::config_internal

//! The rules of the ImageBuild's fields as data: the patterns and limits the CRD schema
//! carries and the Rust validation compiles, and the messages both give.

/// API group of every archforge resource.
pub const GROUP: &str = "archforge.dev";

/// The platforms archforge knows how to place on native nodes, as `os/arch[/variant]`.
pub const KNOWN_PLATFORMS: &[&str] = &[
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/s390x",
    "linux/ppc64le",
    "linux/riscv64",
    "linux/386",
];

/// A pushable image reference with an explicit registry host and a tag.
///
/// The tag is capped at 110 characters so that the per-platform suffix
/// (`-linux-arm-v7` at most) still fits the 128-character tag limit.
pub const IMAGE_REF_PATTERN: &str = r"^(localhost|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+|\[[0-9a-fA-F:]+\])(:[0-9]{1,5})?(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,109}$";
/// A repository with an explicit registry host and no tag or digest (used for the build cache).
pub const REPOSITORY_PATTERN: &str = r"^(localhost|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+|\[[0-9a-fA-F:]+\])(:[0-9]{1,5})?(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)+$";
/// An RFC 1123 DNS label, the form the issue asks of secret names.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A git URL git-sync and git accept. A leading `-` could be read as an option, so the
/// scheme (or `user@host:` for scp-like SSH) is required, and neither the user nor the host
/// may start with `-` (git hands both to ssh, which would read `-oProxyCommand=...` as an
/// option). For ssh:// and scp-like URLs also no `%` in the user or host (git decodes `%2d`
/// to `-` before ssh sees it) and no path starting with `-`.
/// Only printable ASCII (`\x21`-`\x7e`): the classes are spelled out because `\s` means
/// Unicode whitespace in Rust regex and `[\t\n\f\r ]` in the API server's RE2, so U+000B,
/// U+00A0 or U+2028 would pass one layer and not the other. Non-ASCII is percent-encoded.
/// Credentials in the URL are refused by separate rules with their own messages.
pub const GIT_URL_PATTERN: &str = r"^((https?|git)://([^-\x00-\x20\x7f-\x{10FFFF}/?#@][^\x00-\x20\x7f-\x{10FFFF}/?#@]*@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)(:[0-9]{0,5})?([/?#][\x21-\x7e]*)?|ssh://([^-%\x00-\x20\x7f-\x{10FFFF}/?#@][^%\x00-\x20\x7f-\x{10FFFF}/?#@]*@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)(:[0-9]{0,5})?([/?#]([\x21-\x2c\x2e-\x7e][\x21-\x7e]*)?)?|[A-Za-z0-9_][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[\x21-\x2c\x2e-\x7e][\x21-\x7e]*)$";
/// An ssh:// URL whose user info carries a password (`ssh://user:pw@host/...`).
pub const GIT_URL_PASSWORD_PATTERN: &str = r"^ssh://[^/?#@]*:[^/?#@]*@";
/// An http(s):// or git:// URL with any user info: a token is often passed as the user name.
pub const GIT_URL_USERINFO_PATTERN: &str = r"^(https?|git)://[^/?#]*@";
/// An http(s):// URL with a query string or fragment (`?private_token=...`, `?access_token=...`).
pub const GIT_URL_QUERY_PATTERN: &str = r"^https?://[^?#]*[?#]";
/// Why an ssh:// URL with a password is refused. Messages about the URL never quote it: the
/// controller copies them into status and Events, and the URL may hold a secret.
pub const GIT_URL_PASSWORD_MESSAGE: &str = "must not contain a password; put credentials in a Secret and name it in spec.source.git.credentialsSecret";
/// Why an http(s):// or git:// URL with user info is refused.
pub const GIT_URL_USERINFO_MESSAGE: &str = "an http(s):// or git:// URL must not contain a user name, token or password; put credentials in a Secret and name it in spec.source.git.credentialsSecret";
/// Why an http(s):// URL with a query string or fragment is refused.
pub const GIT_URL_QUERY_MESSAGE: &str = "an http(s):// URL must not have a query string or fragment (such as ?private_token=...); put credentials in a Secret and name it in spec.source.git.credentialsSecret";
/// A Kubernetes label key (qualified name): an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters. The prefix's 253-character limit is [`LABEL_PREFIX_TOO_LONG_PATTERN`].
pub const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$";
/// A label key or resource name whose prefix is longer than the 253 characters of a DNS subdomain.
pub const LABEL_PREFIX_TOO_LONG_PATTERN: &str = r"^[^/]{254,}/";
/// The longest label key: a 253-character prefix, `/` and a 63-character name.
pub const MAX_LABEL_KEY_LENGTH: usize = 317;
/// A Kubernetes label value: empty, or at most 63 characters starting and ending alphanumeric.
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";
/// A container resource name Kubernetes accepts: a standard one (cpu, memory,
/// ephemeral-storage, hugepages-<size>) or a domain-prefixed (extended) one.
pub const RESOURCE_NAME_PATTERN: &str = r"^(cpu|memory|ephemeral-storage|hugepages-[0-9]+([KMGTPE]i|[kMGTPE])?|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])$";
/// A non-negative Kubernetes quantity: controller-gen's `resource.Quantity` pattern without
/// the `-` sign (container resources may not be negative) and with a whole-number exponent
/// (the API server's parser refuses `1e1.5`, which controller-gen's pattern lets through) of
/// at most [`MAX_QUANTITY_EXPONENT_DIGITS`] digits: apimachinery truncates the exponent to
/// 32 bits, so it would read `1e4294967296` as `1`.
pub const QUANTITY_PATTERN: &str =
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]{1,2}))?$";
/// Most digits of a quantity's decimal exponent: `1e99` is already capped at the maximum.
pub const MAX_QUANTITY_EXPONENT_DIGITS: usize = 2;
/// Most node selector entries an ImageBuild may add (bounds the CEL cost of the key rule).
/// Longest platform string the schema accepts (`linux/ppc64le`, `linux/riscv64`: 13). A
/// bound the API server's CEL cost estimator counts; the enum it sits beside does not.
pub const MAX_PLATFORM_LENGTH: usize = 16;
pub const MAX_NODE_SELECTOR_ENTRIES: usize = 32;
/// Most tolerations an ImageBuild may add.
pub const MAX_TOLERATIONS: usize = 32;
/// Most resource names in `spec.resources.requests` or `spec.resources.limits`.
pub const MAX_RESOURCE_ENTRIES: usize = 16;
/// Toleration operators Kubernetes accepts (empty means Equal).
pub const TOLERATION_OPERATORS: &[&str] = &["Exists", "Equal", ""];
/// Taint effects Kubernetes accepts in a toleration (empty matches every effect).
pub const TOLERATION_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute", ""];
/// A branch, tag or commit SHA. Never starts with `-` (git would read it as an option).
pub const GIT_REF_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$";
/// A relative path inside the repository: no leading `/` or `-`.
pub const RELATIVE_PATH_PATTERN: &str = r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$";
/// A build argument name, as a Dockerfile `ARG` accepts it.
pub const BUILD_ARG_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";
/// A multi-stage target name.
pub const TARGET_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]*$";
/// A positive duration in whole hours, minutes and seconds (`90s`, `30m`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$";
/// The longest per-platform build archforge accepts.
pub const MAX_TIMEOUT_SECONDS: u64 = 24 * 3600;
/// Node selector keys archforge sets itself from the platform.
pub const RESERVED_NODE_SELECTOR_KEYS: &[&str] = &["kubernetes.io/arch", "kubernetes.io/os"];

/// What a label key (or a prefixed resource name) must look like.
pub const LABEL_KEY_MESSAGE: &str = "keys must be label keys: an optional DNS subdomain prefix of at most 253 characters and '/', then a name of at most 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit";
/// What a resource name must look like.
pub const RESOURCE_NAME_MESSAGE: &str = "resource names are cpu, memory, ephemeral-storage, hugepages-<size> or a domain-prefixed name such as example.com/device (prefix at most 253 characters, name at most 63)";
/// Why an empty toleration key needs operator Exists.
pub const TOLERATION_EMPTY_KEY_MESSAGE: &str =
    "an empty key (match every taint) requires operator Exists";
/// Why operator Exists needs an empty value.
pub const TOLERATION_EXISTS_VALUE_MESSAGE: &str = "operator Exists requires an empty value";
/// Why tolerationSeconds needs effect NoExecute.
pub const TOLERATION_SECONDS_MESSAGE: &str = "tolerationSeconds requires effect NoExecute";
/// Why `resources.claims` is refused.
pub const RESOURCE_CLAIMS_MESSAGE: &str =
    "is not supported: a builder pod has no spec.resourceClaims for a claim to refer to";

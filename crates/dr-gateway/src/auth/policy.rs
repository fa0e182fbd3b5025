//! The authorization policy: which identities may call which methods, read from a
//! TOML file and reloaded when it changes.
//!
//! ```toml
//! # Methods anyone may call, even without credentials (this is the default).
//! open = ["health", "reflection"]
//!
//! [[rules]]
//! name = "fulfiller"          # a label for metrics and logs; the identities stay out of them
//! identities = ["spiffe://cluster.local/ns/shipping/sa/fulfiller", "token:shipping-batch"]
//! allow = ["read", "capture", "subscribe"]
//!
//! [[rules]]
//! name = "support"
//! identities = ["dns:support-tools.support.svc"]
//! allow = ["read", "digitalriver.gateway.v1.ChargeService/CancelItems"]
//! ```
//!
//! An `allow` (or `open`) entry is a group, a method `package.Service/Method`, or a
//! whole service `package.Service/*`. The groups ([`Group`]) and the methods in each
//! are the table [`required_groups`]; a method that needs several groups
//! (CreateFulfillment can both capture and cancel) is allowed by a rule that grants
//! all of them or names the method. An identity is listed in at most one rule.
//! `anonymous` may be listed as an identity, so callers without credentials get that
//! rule's methods (e.g. while clients move to tokens); `--auth-required` overrides it.
//! Names of groups, services and methods are checked against the API when the file
//! is loaded: a typo fails the load instead of silently allowing or denying.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use prost::Message;
use serde::Deserialize;

use super::identity::{ANONYMOUS, AUTHENTICATED, DNS_PREFIX, TOKEN_PREFIX, UNLISTED};

/// Methods grouped by what they let a caller do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// Reads: fulfillments, orders, charges, capture failures, single events and
    /// event listings. Moves no money.
    Read,
    /// Captures money: CaptureItems, and UpdateFulfillmentTracking (a fulfiller's
    /// write; moves no money but changes DR's record of the shipment).
    Capture,
    /// Cancels items (releases authorized money): CancelItems.
    Cancel,
    /// Receives DR's events: Subscribe, and as a consumer group member — Consume
    /// (which may create its group), CreateConsumerGroup, GetConsumerGroup,
    /// ListConsumerGroups.
    Subscribe,
    /// Deletes consumer groups (DeleteConsumerGroup): ends every member's stream
    /// and drops the group's position, so it is apart from `subscribe`.
    ManageGroups,
    /// `grpc.health.v1.Health` (Check, Watch).
    Health,
    /// Server reflection, v1 and v1alpha.
    Reflection,
}

impl Group {
    const ALL: [(Group, &'static str); 7] = [
        (Group::Read, "read"),
        (Group::Capture, "capture"),
        (Group::Cancel, "cancel"),
        (Group::Subscribe, "subscribe"),
        (Group::ManageGroups, "manage_groups"),
        (Group::Health, "health"),
        (Group::Reflection, "reflection"),
    ];

    fn parse(name: &str) -> Option<Group> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(g, _)| *g)
    }
}

const API: &str = "digitalriver.gateway.v1.";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// THE table of which groups each method needs (`/package.Service/Method`).
/// `None`: the method is in no group, so only a rule naming it (or its service)
/// allows it.
pub fn required_groups(path: &str) -> Option<&'static [Group]> {
    use Group::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        HEALTH => return Some(&[Health]),
        REFLECTION_V1 | REFLECTION_V1ALPHA => return Some(&[Reflection]),
        _ => {}
    }
    let groups: &'static [Group] = match (service.strip_prefix(API)?, method) {
        ("FulfillmentService", "CreateFulfillment") => &[Capture, Cancel],
        ("FulfillmentService", "UpdateFulfillmentTracking") => &[Capture],
        ("FulfillmentService", "GetFulfillment" | "ListFulfillments" | "GetOrder") => &[Read],
        ("ChargeService", "CaptureItems") => &[Capture],
        ("ChargeService", "CancelItems") => &[Cancel],
        (
            "ChargeService",
            "GetCharge" | "ListOrderCharges" | "GetCaptureFailure" | "GetPaymentSource",
        ) => &[Read],
        // why: a consumer group member creates its group (Consume's `start.create`)
        // and watches its progress; deleting one ends other members' streams.
        (
            "EventStream",
            "Subscribe"
            | "Consume"
            | "CreateConsumerGroup"
            | "GetConsumerGroup"
            | "ListConsumerGroups",
        ) => &[Subscribe],
        ("EventStream", "DeleteConsumerGroup") => &[ManageGroups],
        ("EventStream", "GetEvent" | "ListEvents") => &[Read],
        _ => return None,
    };
    Some(groups)
}

/// What a rule (or `open`) grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    groups: HashSet<Group>,
    /// Full paths, `/package.Service/Method`.
    methods: HashSet<String>,
    /// `package.Service`.
    services: HashSet<String>,
}

impl Grants {
    /// Whether a call of `path` (`/package.Service/Method`) is granted.
    pub fn allows(&self, path: &str) -> bool {
        if self.methods.contains(path) {
            return true;
        }
        let service = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map(|(s, _)| s);
        if service.is_some_and(|s| self.services.contains(s)) {
            return true;
        }
        required_groups(path).is_some_and(|needed| needed.iter().all(|g| self.groups.contains(g)))
    }

    fn parse(entries: &[String], field: &str) -> Result<Self, PolicyError> {
        let mut grants = Grants::default();
        for entry in entries {
            let entry = entry.trim();
            if let Some(group) = Group::parse(entry) {
                grants.groups.insert(group);
            } else if let Some(service) = entry.strip_suffix("/*") {
                if !known_services().contains(service) {
                    return Err(PolicyError::invalid(
                        field,
                        format!("unknown service {service:?}"),
                    ));
                }
                grants.services.insert(service.to_owned());
            } else if entry.contains('/') {
                let path = format!("/{}", entry.trim_start_matches('/'));
                if !known_methods().contains(&path) {
                    return Err(PolicyError::invalid(
                        field,
                        format!("unknown method {entry:?}"),
                    ));
                }
                grants.methods.insert(path);
            } else {
                return Err(PolicyError::invalid(
                    field,
                    format!(
                        "{entry:?} is neither a group (read, capture, cancel, subscribe, manage_groups, health, reflection) \
                         nor a method (package.Service/Method or package.Service/*)"
                    ),
                ));
            }
        }
        Ok(grants)
    }
}

/// One rule: a name and what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    name: String,
    grants: Grants,
}

impl Rule {
    /// The rule's name (a bounded label for metrics and logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }
}

/// A loaded policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    open: Grants,
    rules: Vec<Rule>,
    /// Identity (as written) → index into `rules`.
    by_identity: HashMap<String, usize>,
}

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("the policy file is not valid: {0}")]
    Syntax(#[from] toml::de::Error),
    /// A value is not allowed.
    #[error("the policy file is not valid: {field}: {problem}")]
    Invalid {
        /// Where (`rules[1].allow`).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

impl PolicyError {
    fn invalid(field: &str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "default_open")]
    open: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    identities: Vec<String>,
    allow: Vec<String>,
}

fn default_open() -> Vec<String> {
    vec!["health".into(), "reflection".into()]
}

/// Longest rule name (it is a metrics label value).
const MAX_RULE_NAME_LEN: usize = 63;

impl Policy {
    /// What the gateway does without a policy file: health and reflection open to
    /// anyone, no rules.
    pub fn open_by_default() -> Grants {
        // Only known group names: parsing cannot fail.
        Grants::parse(&default_open(), "open").unwrap_or_default()
    }

    /// Reads and parses the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses a policy file's text (see the module docs).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text)?;
        let open = Grants::parse(&file.open, "open")?;
        let mut rules = Vec::with_capacity(file.rules.len());
        let mut by_identity = HashMap::new();
        for (i, rule) in file.rules.into_iter().enumerate() {
            let field = |f: &str| format!("rules[{i}].{f}");
            let name = rule.name.trim().to_owned();
            if name.is_empty()
                || name.len() > MAX_RULE_NAME_LEN
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(PolicyError::invalid(
                    &field("name"),
                    "1 to 63 letters, digits, `.`, `_` or `-`",
                ));
            }
            if [ANONYMOUS, AUTHENTICATED, UNLISTED].contains(&name.as_str()) {
                return Err(PolicyError::invalid(
                    &field("name"),
                    format!("{name:?} is reserved for callers no rule names"),
                ));
            }
            if rules.iter().any(|r: &Rule| r.name == name) {
                return Err(PolicyError::invalid(
                    &field("name"),
                    format!("{name:?} is used twice"),
                ));
            }
            for identity in &rule.identities {
                let identity = identity.trim();
                check_identity(identity)
                    .map_err(|p| PolicyError::invalid(&field("identities"), p))?;
                if by_identity
                    .insert(identity.to_owned(), rules.len())
                    .is_some()
                {
                    return Err(PolicyError::invalid(
                        &field("identities"),
                        format!("{identity:?} is listed in more than one rule"),
                    ));
                }
            }
            let grants = Grants::parse(&rule.allow, &field("allow"))?;
            rules.push(Rule { name, grants });
        }
        Ok(Self {
            open,
            rules,
            by_identity,
        })
    }

    /// What anyone may call, with or without credentials.
    pub fn open(&self) -> &Grants {
        &self.open
    }

    /// The rule that names `identity` (as written, or `anonymous`).
    pub fn rule_for(&self, identity: &str) -> Option<&Rule> {
        self.by_identity.get(identity).map(|&i| &self.rules[i])
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

fn check_identity(identity: &str) -> Result<(), String> {
    let ok = if identity == ANONYMOUS {
        true
    } else if let Some(name) = identity
        .strip_prefix(DNS_PREFIX)
        .or_else(|| identity.strip_prefix(TOKEN_PREFIX))
    {
        !name.is_empty() && !name.contains(char::is_whitespace)
    } else {
        // A URI SAN: a scheme, `:`, and more (e.g. `spiffe://trust-domain/path`).
        identity.split_once(':').is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
                && !rest.is_empty()
                && !identity.contains(char::is_whitespace)
        })
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{identity:?} is not an identity: write a certificate's URI SAN (spiffe://…), \
             dns:<DNS SAN>, token:<token name> or anonymous"
        ))
    }
}

/// Every method the gateway serves: the API's (from its descriptor set), health's
/// and reflection's.
pub fn known_methods() -> &'static HashSet<String> {
    static METHODS: OnceLock<HashSet<String>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut methods: HashSet<String> = [
            format!("/{HEALTH}/Check"),
            format!("/{HEALTH}/Watch"),
            format!("/{REFLECTION_V1}/ServerReflectionInfo"),
            format!("/{REFLECTION_V1ALPHA}/ServerReflectionInfo"),
        ]
        .into();
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
        methods
    })
}

fn known_services() -> &'static HashSet<String> {
    static SERVICES: OnceLock<HashSet<String>> = OnceLock::new();
    SERVICES.get_or_init(|| {
        known_methods()
            .iter()
            .filter_map(|m| {
                m.strip_prefix('/')?
                    .split_once('/')
                    .map(|(s, _)| s.to_owned())
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &str = "/digitalriver.gateway.v1.ChargeService/CaptureItems";
    const CANCEL: &str = "/digitalriver.gateway.v1.ChargeService/CancelItems";
    const GET_CHARGE: &str = "/digitalriver.gateway.v1.ChargeService/GetCharge";
    const CREATE: &str = "/digitalriver.gateway.v1.FulfillmentService/CreateFulfillment";
    const SUBSCRIBE: &str = "/digitalriver.gateway.v1.EventStream/Subscribe";
    const CONSUME: &str = "/digitalriver.gateway.v1.EventStream/Consume";
    const GET_GROUP: &str = "/digitalriver.gateway.v1.EventStream/GetConsumerGroup";
    const DELETE_GROUP: &str = "/digitalriver.gateway.v1.EventStream/DeleteConsumerGroup";
    const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

    #[test]
    fn every_method_the_gateway_serves_is_in_a_group() {
        // why: a new RPC (e.g. from a proto change) must be placed in a group here, or
        // every policy would deny it to everyone but rules that name it.
        let methods = known_methods();
        assert!(
            methods.len() >= 16,
            "the descriptor set decodes: {methods:?}"
        );
        for method in methods {
            assert!(required_groups(method).is_some(), "{method} is in no group");
        }
    }

    #[test]
    fn groups_grant_their_methods_and_create_fulfillment_needs_capture_and_cancel() {
        let policy = Policy::parse(
            r#"
            [[rules]]
            name = "reader"
            identities = ["spiffe://cluster.local/ns/a/sa/reader"]
            allow = ["read"]
            [[rules]]
            name = "capturer"
            identities = ["dns:capturer.svc", "token:batch"]
            allow = ["read", "capture"]
            [[rules]]
            name = "fulfiller"
            identities = ["token:fulfiller"]
            allow = ["capture", "cancel", "subscribe"]
            [[rules]]
            name = "operator"
            identities = ["token:operator"]
            allow = ["manage_groups"]
            "#,
        )
        .unwrap();
        let reader = policy
            .rule_for("spiffe://cluster.local/ns/a/sa/reader")
            .unwrap();
        assert!(reader.grants().allows(GET_CHARGE));
        assert!(!reader.grants().allows(CAPTURE));
        assert!(!reader.grants().allows(SUBSCRIBE));
        let capturer = policy.rule_for("token:batch").unwrap();
        assert_eq!(capturer.name(), "capturer");
        assert!(capturer.grants().allows(CAPTURE));
        assert!(!capturer.grants().allows(CANCEL));
        assert!(
            !capturer.grants().allows(CREATE),
            "CreateFulfillment can cancel too"
        );
        let fulfiller = policy.rule_for("token:fulfiller").unwrap();
        assert!(fulfiller.grants().allows(CREATE));
        assert!(fulfiller.grants().allows(SUBSCRIBE));
        assert!(fulfiller.grants().allows(CONSUME), "a group member");
        assert!(fulfiller.grants().allows(GET_GROUP));
        assert!(
            !fulfiller.grants().allows(DELETE_GROUP),
            "deleting a group ends other members' streams"
        );
        assert!(!reader.grants().allows(CONSUME));
        assert!(!fulfiller.grants().allows(GET_CHARGE));
        let operator = policy.rule_for("token:operator").unwrap();
        assert!(operator.grants().allows(DELETE_GROUP));
        assert!(!operator.grants().allows(CONSUME));
        assert!(policy.rule_for("token:unknown").is_none());
        assert!(
            policy.open().allows(HEALTH_CHECK),
            "health is open by default"
        );
        assert!(!policy.open().allows(GET_CHARGE));
    }

    #[test]
    fn methods_and_services_can_be_named_and_open_can_be_closed() {
        let policy = Policy::parse(
            r#"
            open = []
            [[rules]]
            name = "support"
            identities = ["anonymous"]
            allow = ["digitalriver.gateway.v1.ChargeService/CancelItems", "grpc.health.v1.Health/*"]
            "#,
        )
        .unwrap();
        assert!(!policy.open().allows(HEALTH_CHECK));
        let rule = policy.rule_for("anonymous").unwrap();
        assert!(rule.grants().allows(CANCEL));
        assert!(rule.grants().allows(HEALTH_CHECK));
        assert!(!rule.grants().allows(CAPTURE));
        assert!(!rule
            .grants()
            .allows("/digitalriver.gateway.v1.ChargeService/NoSuch"));
    }

    #[test]
    fn mistakes_fail_the_load_and_say_where() {
        for (text, said) in [
            ("[[rules]]\nname='a'\nidentities=['token:x']\nallow=['raed']", "rules[0].allow"),
            ("[[rules]]\nname='a'\nidentities=['token:x']\nallow=['x.Y/Z']", "unknown method"),
            ("[[rules]]\nname='a'\nidentities=['token:x']\nallow=['x.Y/*']", "unknown service"),
            ("[[rules]]\nname='a'\nidentities=['fulfiller']\nallow=['read']", "rules[0].identities"),
            ("[[rules]]\nname='a b'\nidentities=['token:x']\nallow=['read']", "rules[0].name"),
            ("[[rules]]\nname='anonymous'\nidentities=['token:x']\nallow=['read']", "reserved"),
            (
                "[[rules]]\nname='a'\nidentities=['token:x']\nallow=['read']\n[[rules]]\nname='b'\nidentities=['token:x']\nallow=['read']",
                "more than one rule",
            ),
            (
                "[[rules]]\nname='a'\nidentities=['token:x']\nallow=['read']\n[[rules]]\nname='a'\nidentities=['token:y']\nallow=['read']",
                "used twice",
            ),
            ("[[rules]]\nname='a'\nidentities=['token:x']\nalow=['read']", "alow"),
            ("open = 'health'", "invalid type"),
        ] {
            let error = Policy::parse(text).unwrap_err().to_string();
            assert!(error.contains(said), "{text:?}: {error}");
        }
    }

    #[test]
    fn an_empty_policy_opens_only_health_and_reflection() {
        let policy = Policy::parse("").unwrap();
        assert_eq!(policy.open(), &Policy::open_by_default());
        assert!(policy
            .open()
            .allows("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!policy.open().allows(SUBSCRIBE));
        assert!(policy.rules().is_empty());
    }
}

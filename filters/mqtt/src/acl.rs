//! Topic access control: ordered allow/deny rules over MQTT topic filters.
//!
//! A rule names an action (`allow`/`deny`), what it governs (`publish`, `subscribe` or
//! both), an MQTT topic filter (`+` and `#` wildcards; `%c` and `%u` stand for the client
//! id and the user name) and optionally which clients it is for (client id and user name
//! patterns, `*` matching any run of characters). Rules are tried in order; the first that
//! applies decides; when none does, `default` decides.
//!
//! A PUBLISH is checked against its topic name. A SUBSCRIBE filter is checked as a set of
//! topics: an `allow` rule applies when its filter covers every topic the subscription can
//! match, a `deny` rule when the two share at least one topic. So `#` cannot be subscribed
//! to while `secret/#` is denied, and `allow sensors/#` does not let `#` through.

use serde::{Deserialize, Serialize};

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Let it through.
    #[default]
    Allow,
    /// Refuse it.
    Deny,
}

/// What a rule governs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// PUBLISH (and the will message of CONNECT).
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Both.
    #[default]
    Both,
}

/// One access rule.
///
/// ```yaml
/// - { action: allow, access: both, topic: "devices/%c/#" }
/// - { action: deny, access: publish, topic: "alerts/#", username: "guest*" }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Allow or deny.
    pub action: Action,
    /// Publish, subscribe or both (default both).
    #[serde(default)]
    pub access: Access,
    /// An MQTT topic filter; `%c` is replaced by the client id, `%u` by the user name.
    pub topic: String,
    /// Only for client ids matching this pattern (`*` = any characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Only for user names matching this pattern (`*` = any characters); a client without
    /// a user name never matches a rule that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// What to do with a PUBLISH that the ACL refuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeny {
    /// Close the client's connection (MQTT 5: DISCONNECT with reason 0x87 Not authorized
    /// first).
    #[default]
    Disconnect,
    /// Drop the message and keep the connection: QoS 1/2 are acknowledged (MQTT 5 with
    /// reason 0x87).
    Drop,
}

/// The access list (`acl:` of `proxy-mqtt`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// The decision when no rule applies (default allow).
    #[serde(default)]
    pub default: Action,
    /// The rules, first match wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// What a refused PUBLISH does (default disconnect). A refused subscription always
    /// gets a failure code in SUBACK.
    #[serde(default)]
    pub on_deny: OnDeny,
}

/// Who is asking.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The client id of CONNECT.
    pub client_id: &'a str,
    /// The user name in force (from CONNECT or the TLS identity).
    pub username: Option<&'a str>,
}

impl AclConfig {
    /// Checks the rules: each topic must be a valid filter once `%c`/`%u` are stood in.
    pub fn validate(&self) -> Result<(), String> {
        for (i, r) in self.rules.iter().enumerate() {
            let probe = r.topic.replace("%c", "c").replace("%u", "u");
            flowgate_mqtt::validate_topic_filter(&probe, 65_535, false)
                .map_err(|e| format!("rules[{i}].topic {:?}: {e}", r.topic))?;
        }
        Ok(())
    }

    /// May `who` publish to the topic name `topic`?
    pub fn may_publish(&self, who: Subject<'_>, topic: &str) -> bool {
        self.decide(who, Access::Publish, |_, rule| filter_matches(rule, topic))
    }

    /// May `who` subscribe with the topic filter `filter` (without any `$share/…/` part)?
    pub fn may_subscribe(&self, who: Subject<'_>, filter: &str) -> bool {
        self.decide(who, Access::Subscribe, |action, rule| match action {
            Action::Allow => covers(rule, filter),
            Action::Deny => intersects(rule, filter),
        })
    }

    fn decide(
        &self,
        who: Subject<'_>,
        access: Access,
        applies: impl Fn(Action, &str) -> bool,
    ) -> bool {
        for r in &self.rules {
            if !(r.access == Access::Both || r.access == access) || !r.is_for(who) {
                continue;
            }
            if applies(r.action, &r.expand(who)) {
                return r.action == Action::Allow;
            }
        }
        self.default == Action::Allow
    }
}

impl Rule {
    fn is_for(&self, who: Subject<'_>) -> bool {
        if let Some(p) = &self.client_id
            && !glob(p, who.client_id)
        {
            return false;
        }
        if let Some(p) = &self.username {
            match who.username {
                Some(u) if glob(p, u) => {}
                _ => return false,
            }
        }
        true
    }

    fn expand(&self, who: Subject<'_>) -> String {
        if !self.topic.contains('%') {
            return self.topic.clone();
        }
        self.topic
            .replace("%c", who.client_id)
            .replace("%u", who.username.unwrap_or(""))
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Does the topic filter `filter` match the topic name `topic` (MQTT §4.7)? Wildcards at
/// the first level do not match topics that start with `$`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Does the rule filter `rule` match every topic that `filter` can match?
fn covers(rule: &str, filter: &str) -> bool {
    if filter.is_empty() || (filter.starts_with('$') && rule.starts_with(['+', '#'])) {
        return false;
    }
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(a), Some(b)) if a == b && b != "+" && b != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Can some topic match both filters?
fn intersects(a: &str, b: &str) -> bool {
    let dollar = |x: &str| x.starts_with('$');
    let wild = |x: &str| x.starts_with(['+', '#']);
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(default: Action, rules: &[(Action, Access, &str)]) -> AclConfig {
        AclConfig {
            default,
            rules: rules
                .iter()
                .map(|&(action, access, topic)| Rule {
                    action,
                    access,
                    topic: topic.into(),
                    client_id: None,
                    username: None,
                })
                .collect(),
            on_deny: OnDeny::Disconnect,
        }
    }

    const WHO: Subject<'static> = Subject {
        client_id: "dev1",
        username: Some("alice"),
    };

    #[test]
    fn topic_filter_matching_follows_the_spec() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
            ("a/b", "a/b/", false),
            ("+", "", true),
        ];
        for (f, t, want) in cases {
            assert_eq!(filter_matches(f, t), want, "{f} vs {t}");
        }
    }

    #[test]
    fn covers_and_intersects() {
        assert!(covers("a/#", "a/b/+"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("#", "#"));
        assert!(!covers("sensors/#", "#"));
        assert!(intersects("secret/#", "#"));
        assert!(intersects("a/+/c", "a/b/+"));
        assert!(!intersects("a/b", "a/c"));
        assert!(!intersects("a/b", "a/b/c"));
        assert!(!intersects("#", "$SYS/#"));
        assert!(!covers("+/x", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn first_matching_rule_decides_publish() {
        let a = acl(
            Action::Deny,
            &[
                (Action::Deny, Access::Publish, "devices/%c/admin"),
                (Action::Allow, Access::Both, "devices/%c/#"),
            ],
        );
        assert!(a.may_publish(WHO, "devices/dev1/temp"));
        assert!(!a.may_publish(WHO, "devices/dev1/admin"));
        assert!(!a.may_publish(WHO, "devices/dev2/temp"));
        assert!(!a.may_publish(WHO, "other"));
    }

    #[test]
    fn subscriptions_are_checked_as_sets_of_topics() {
        let a = acl(
            Action::Allow,
            &[(Action::Deny, Access::Subscribe, "secret/#")],
        );
        assert!(a.may_subscribe(WHO, "public/#"));
        assert!(!a.may_subscribe(WHO, "#"));
        assert!(!a.may_subscribe(WHO, "+/x"));
        assert!(!a.may_subscribe(WHO, "secret/a"));
        let b = acl(
            Action::Deny,
            &[(Action::Allow, Access::Subscribe, "sensors/#")],
        );
        assert!(b.may_subscribe(WHO, "sensors/+/t"));
        assert!(!b.may_subscribe(WHO, "#"));
        assert!(!b.may_subscribe(WHO, "+/t"));
        // a publish rule does not govern subscriptions
        assert!(!b.may_publish(WHO, "sensors/1"));
    }

    #[test]
    fn rules_can_be_for_some_clients_only() {
        let mut a = acl(Action::Allow, &[(Action::Deny, Access::Both, "#")]);
        a.rules[0].username = Some("guest*".into());
        assert!(a.may_publish(WHO, "x"));
        let guest = Subject {
            client_id: "g",
            username: Some("guest-7"),
        };
        assert!(!a.may_publish(guest, "x"));
        let anon = Subject {
            client_id: "g",
            username: None,
        };
        assert!(a.may_publish(anon, "x"));
        a.rules[0].username = None;
        a.rules[0].client_id = Some("*-test-*".into());
        let t = Subject {
            client_id: "a-test-b",
            username: None,
        };
        assert!(!a.may_publish(t, "x"));
        assert!(a.may_publish(WHO, "x"));
    }

    #[test]
    fn glob_patterns() {
        assert!(glob("*", ""));
        assert!(glob("a*", "abc"));
        assert!(glob("*c", "abc"));
        assert!(glob("a*c", "ac"));
        assert!(!glob("a*c", "ab"));
        assert!(glob("a*b*c", "a1b2c"));
        assert!(!glob("abc", "abcd"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn validate_rejects_bad_filters() {
        let a = acl(Action::Allow, &[(Action::Deny, Access::Both, "a/#/b")]);
        assert!(a.validate().is_err());
        let ok = acl(Action::Allow, &[(Action::Deny, Access::Both, "d/%c/#")]);
        assert!(ok.validate().is_ok());
    }
}

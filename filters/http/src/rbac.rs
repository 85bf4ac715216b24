//! `rbac`: who may make which requests (see [`RbacConfig`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use flowgate_pipeline::joint::Branch;
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{Context, Description, Events, Filter, Head, Pipeline, SubPipeline};
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderValue, Method, StatusCode, request};
use serde::{Deserialize, Serialize};

use super::Respond;
use super::route::whole_regex;

/// Whether the policies allow (everything else is denied) or deny (everything else is
/// allowed).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RbacAction {
    /// Only what a policy matches passes.
    #[default]
    Allow,
    /// What a policy matches is refused.
    Deny,
}

/// `rbac`: who may make which requests, decided on the request head — the peer's verified
/// certificate identity (a mesh's SPIFFE ID, from `accept-tls` with `client_auth`) and the
/// method, path and headers. What is not allowed is answered 403 here and never reaches
/// the sub-pipeline. The same model as Envoy's HTTP RBAC filter, as a mesh sidecar needs it.
///
/// ```yaml
/// - rbac:
///     pipeline: app
///     action: allow                      # allow (default): only what a policy matches
///     policies:                          # deny: all but what a policy matches
///       readers:
///         principals: ["spiffe://cluster.local/ns/shop/sa/client"]   # or "*": anyone
///         permissions:
///           - { methods: [GET, HEAD], path_regex: "/books(/.*)?" }
///           - { path_prefix: /health }
///           - {}                         # any request
/// ```
///
/// A request matches a policy when one of its principals names the peer and one of its
/// permissions holds (every part a permission gives must hold: a method in the list, the
/// path — exact, prefix or a whole-path regex — and each header's value against a regex).
/// The peer is the identity `accept-tls` recorded (the first URI or DNS name of the
/// verified client certificate); a connection without one matches only `"*"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RbacConfig {
    /// The pipeline allowed requests go on to.
    pub pipeline: String,
    /// What a matching policy means. Default `allow`.
    #[serde(default)]
    pub action: RbacAction,
    /// The policies by name (the name shows in logs). With `allow` and none, nothing
    /// passes.
    #[serde(default)]
    pub policies: BTreeMap<String, RbacPolicyConfig>,
}

/// One policy: any of its principals, making a request any of its permissions allows.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RbacPolicyConfig {
    /// Peer identities, exactly (`spiffe://…`), or `"*"` for anyone. At least one.
    pub principals: Vec<String>,
    /// What they may do; `{}` is any request. At least one.
    pub permissions: Vec<RbacPermissionConfig>,
}

/// One permission: every part given must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RbacPermissionConfig {
    /// The request's method is one of these (any when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The path (without the query) is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The whole path matches this regular expression (Rust `regex`: linear time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Each header's value matches its regular expression (a missing header does not).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

struct Permission {
    methods: Vec<Method>,
    path: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<regex::Regex>,
    headers: Vec<(HeaderName, regex::Regex)>,
}

impl Permission {
    fn holds(&self, req: &request::Parts) -> bool {
        let path = req.uri.path();
        (self.methods.is_empty() || self.methods.contains(&req.method))
            && self.path.as_deref().is_none_or(|p| p == path)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.path_regex.as_ref().is_none_or(|r| r.is_match(path))
            && self.headers.iter().all(|(name, re)| {
                req.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| re.is_match(v))
            })
    }
}

struct Policy {
    name: String,
    anyone: bool,
    principals: Vec<String>,
    permissions: Vec<Permission>,
}

impl Policy {
    fn matches(&self, peer: Option<&str>, req: &request::Parts) -> bool {
        (self.anyone || peer.is_some_and(|p| self.principals.iter().any(|x| x == p)))
            && self.permissions.iter().any(|p| p.holds(req))
    }
}

/// The policies of `config`, checked and compiled.
fn compile(config: &RbacConfig) -> Result<Vec<Policy>, ConfigError> {
    let mut policies = Vec::new();
    for (name, p) in &config.policies {
        let at = |f: &str| format!("policies.{name}.{f}");
        if p.principals.is_empty() {
            return Err(ConfigError::new(
                at("principals"),
                "name at least one, or \"*\"",
            ));
        }
        if p.permissions.is_empty() {
            return Err(ConfigError::new(
                at("permissions"),
                "give at least one, or {} for any request",
            ));
        }
        let mut permissions = Vec::new();
        for (i, m) in p.permissions.iter().enumerate() {
            let at = |f: &str| format!("policies.{name}.permissions[{i}].{f}");
            permissions.push(Permission {
                methods: m
                    .methods
                    .iter()
                    .map(|x| {
                        Method::from_bytes(x.as_bytes())
                            .map_err(|e| ConfigError::new(at("methods"), e))
                    })
                    .collect::<Result<_, _>>()?,
                path: m.path.clone(),
                path_prefix: m.path_prefix.clone(),
                path_regex: m
                    .path_regex
                    .as_deref()
                    .map(|r| whole_regex(r, &at("path_regex")))
                    .transpose()?,
                headers: m
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let n = HeaderName::from_bytes(k.as_bytes())
                            .map_err(|e| ConfigError::new(at(&format!("headers.{k}")), e))?;
                        Ok((n, whole_regex(v, &at(&format!("headers.{k}")))?))
                    })
                    .collect::<Result<_, ConfigError>>()?,
            });
        }
        policies.push(Policy {
            name: name.clone(),
            anyone: p.principals.iter().any(|x| x == "*"),
            principals: p.principals.clone(),
            permissions,
        });
    }
    Ok(policies)
}

impl FilterConfig for RbacConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        let sub = SubPipeline::named(self.pipeline.clone());
        Ok(Arc::new(Rbac::new(*self, sub)?))
    }
}

/// The `rbac` filter: a [`Branch`] on the request head to the sub-pipeline, or to a
/// [`Respond`] with the 403.
struct Rbac {
    branch: Branch,
    sub: SubPipeline,
    config: RbacConfig,
}

impl Rbac {
    /// `config`'s policies in front of `sub`.
    fn new(config: RbacConfig, sub: SubPipeline) -> Result<Self, ConfigError> {
        let policies = compile(&config)?;
        let action = config.action;
        // The 403, a bodied response naming RBAC, as Envoy's.
        let mut headers = http::HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let denied = Pipeline::builder("rbac-denied")
            .filter(Respond::new(
                StatusCode::FORBIDDEN,
                headers,
                bytes::Bytes::from_static(b"RBAC: access denied"),
            ))
            .build()
            .map_err(|e| ConfigError::new("pipeline", e))?;
        let branch = Branch::new()
            .when(
                "allowed",
                move |cx, head| allowed(&policies, action, cx, head),
                sub.clone(),
            )
            .otherwise(denied);
        Ok(Rbac {
            branch,
            sub,
            config,
        })
    }
}

/// Whether the stream starting with `head` may pass (one that is not a request does).
fn allowed(policies: &[Policy], action: RbacAction, cx: &Context, head: Option<&Head>) -> bool {
    let Some(req) = head.and_then(|h| h.get::<request::Parts>()) else {
        return true;
    };
    let peer = cx.conn().tls.and_then(|t| t.peer_identity.clone());
    let matched = policies.iter().find(|p| p.matches(peer.as_deref(), req));
    let allowed = match action {
        RbacAction::Allow => matched.is_some(),
        RbacAction::Deny => matched.is_none(),
    };
    if !allowed {
        tracing::debug!(
            peer = peer.as_deref().unwrap_or("-"),
            method = %req.method,
            path = req.uri.path(),
            policy = matched.map_or("-", |p| p.name.as_str()),
            "rbac: denied"
        );
    }
    allowed
}

impl Filter for Rbac {
    fn describe(&self) -> Description {
        Description::filter("rbac")
            .options(&self.config)
            .with_sub(self.sub.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        self.branch.attach(input, cx)
    }

    fn subs(&self) -> Vec<SubPipeline> {
        vec![self.sub.clone()]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use flowgate_pipeline::{ConnInfo, Event, Tail, TlsInfo};

    /// `rbac` configured by `yaml` in front of an app that answers 200 to anything.
    fn rbac(yaml: serde_json::Value) -> Rbac {
        let config: RbacConfig = serde_json::from_value(yaml).unwrap();
        let app = Pipeline::builder("app")
            .transform("ok", || {
                |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                    Event::MessageStart(_) => {
                        let (ok, ()) = http::Response::new(()).into_parts();
                        out(Event::MessageStart(Head::new(ok)));
                    }
                    other => out(other),
                }
            })
            .build()
            .unwrap();
        Rbac::new(config, app.into()).unwrap()
    }

    /// The status of `method path` (with `x-team: team`) from `peer` through `rbac`.
    async fn status(
        rbac: &Rbac,
        peer: Option<&str>,
        method: &str,
        path: &str,
        team: Option<&str>,
    ) -> u16 {
        let mut req = http::Request::builder().method(method).uri(path);
        if let Some(t) = team {
            req = req.header("x-team", t);
        }
        let (req, ()) = req.body(()).unwrap().into_parts();
        let cx = Context::with_conn(ConnInfo {
            tls: peer.map(|p| {
                Arc::new(TlsInfo {
                    peer_identity: Some(p.to_string()),
                    ..Default::default()
                })
            }),
            ..Default::default()
        });
        let out = flowgate_pipeline::testing::run_with(
            rbac,
            vec![
                Event::MessageStart(Head::new(req)),
                Event::MessageEnd(Tail::none()),
                Event::END,
            ],
            &cx,
        )
        .await;
        out.iter()
            .find_map(|e| match e {
                Event::MessageStart(h) => {
                    h.get::<http::response::Parts>().map(|p| p.status.as_u16())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no response: {out:?}"))
    }

    const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";
    const THIEF: &str = "spiffe://cluster.local/ns/shop/sa/thief";

    #[tokio::test]
    async fn only_the_named_peer_makes_the_allowed_requests() {
        let rbac = rbac(serde_json::json!({
            "pipeline": "app",
            "policies": {
                "readers": {
                    "principals": [CLIENT],
                    "permissions": [{"methods": ["GET"], "path_regex": "/books(/.*)?", "headers": {"x-team": "a.*"}}]
                },
                "health": {"principals": ["*"], "permissions": [{"path": "/health"}]}
            }
        }));
        assert_eq!(
            status(&rbac, Some(CLIENT), "GET", "/books/1", Some("alpha")).await,
            200
        );
        assert_eq!(
            status(&rbac, Some(CLIENT), "GET", "/books", Some("a")).await,
            200
        );
        // Every part of the permission must hold.
        assert_eq!(
            status(&rbac, Some(CLIENT), "POST", "/books", Some("alpha")).await,
            403
        );
        assert_eq!(
            status(&rbac, Some(CLIENT), "GET", "/bookshelf", Some("alpha")).await,
            403
        );
        assert_eq!(
            status(&rbac, Some(CLIENT), "GET", "/books/1", Some("beta")).await,
            403
        );
        assert_eq!(
            status(&rbac, Some(CLIENT), "GET", "/books/1", None).await,
            403
        );
        // Another peer, or none: only what "*" may.
        assert_eq!(
            status(&rbac, Some(THIEF), "GET", "/books", Some("alpha")).await,
            403
        );
        assert_eq!(
            status(&rbac, None, "GET", "/books", Some("alpha")).await,
            403
        );
        assert_eq!(status(&rbac, None, "GET", "/health", None).await, 200);
    }

    #[tokio::test]
    async fn deny_refuses_what_matches_and_no_policy_allows_nothing() {
        let deny = rbac(serde_json::json!({
            "pipeline": "app",
            "action": "deny",
            "policies": {"no-thieves": {"principals": [THIEF], "permissions": [{}]}}
        }));
        assert_eq!(status(&deny, Some(THIEF), "GET", "/", None).await, 403);
        assert_eq!(status(&deny, Some(CLIENT), "GET", "/", None).await, 200);
        assert_eq!(status(&deny, None, "GET", "/", None).await, 200);
        let none = rbac(serde_json::json!({"pipeline": "app"}));
        assert_eq!(status(&none, Some(CLIENT), "GET", "/", None).await, 403);
    }

    #[test]
    fn a_policy_without_principals_or_permissions_or_with_a_bad_regex_is_refused() {
        let err = |yaml: serde_json::Value| {
            let config: RbacConfig = serde_json::from_value(yaml).unwrap();
            compile(&config).err().unwrap().to_string()
        };
        let e = err(
            serde_json::json!({"pipeline": "a", "policies": {"p": {"principals": [], "permissions": [{}]}}}),
        );
        assert!(e.contains("policies.p.principals"), "{e}");
        let e = err(
            serde_json::json!({"pipeline": "a", "policies": {"p": {"principals": ["*"], "permissions": []}}}),
        );
        assert!(e.contains("policies.p.permissions"), "{e}");
        let e = err(
            serde_json::json!({"pipeline": "a", "policies": {"p": {"principals": ["*"], "permissions": [{"path_regex": "("}]}}}),
        );
        assert!(e.contains("policies.p.permissions[0].path_regex"), "{e}");
    }
}

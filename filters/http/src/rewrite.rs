//! `rewrite`: changes the path of requests; `redirect`: answers requests with a redirect
//! built from the request.

use std::sync::Arc;

use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{Context, Description, Event, Filter, Head, Tail, Transform};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, StatusCode, request};
use serde::{Deserialize, Serialize};

/// Replaces a path prefix.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRewrite {
    /// The prefix to take away (`/old/`).
    pub from: String,
    /// What to put in its place (`/new/`).
    pub to: String,
}

impl PrefixRewrite {
    fn check(&self, field: &str) -> Result<(), ConfigError> {
        if !self.from.starts_with('/') || !self.to.starts_with('/') {
            return Err(ConfigError::new(field, "`from` and `to` start with /"));
        }
        Ok(())
    }

    /// The rewritten path-and-query, if the path starts with `from`.
    fn apply(&self, uri: &Uri) -> Option<PathAndQuery> {
        let rest = uri.path().strip_prefix(self.from.as_str())?;
        let mut s = String::with_capacity(self.to.len() + rest.len() + 16);
        s.push_str(&self.to);
        s.push_str(rest);
        if let Some(q) = uri.query() {
            s.push('?');
            s.push_str(q);
        }
        PathAndQuery::try_from(s).ok()
    }
}

/// `rewrite:` — replaces a path prefix of the requests that pass (before `mux-http`).
///
/// ```yaml
/// - rewrite: { path_prefix: { from: /api/v1/, to: /v1/ } }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// The prefix replacement.
    pub path_prefix: PrefixRewrite,
}

impl FilterConfig for RewriteConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        self.path_prefix.check("path_prefix")?;
        Ok(Arc::new(Rewrite {
            config: Arc::new(*self),
        }))
    }
}

struct Rewrite {
    config: Arc<RewriteConfig>,
}

impl Filter for Rewrite {
    fn describe(&self) -> Description {
        Description::filter("rewrite").options(&*self.config)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        let c = self.config.clone();
        Some(Box::new(
            move |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                Event::MessageStart(head) => {
                    let new = head
                        .get::<request::Parts>()
                        .and_then(|p| c.path_prefix.apply(&p.uri).map(|pq| (p, pq)));
                    match new {
                        Some((p, pq)) => {
                            let mut p = p.clone();
                            let mut parts = p.uri.clone().into_parts();
                            parts.path_and_query = Some(pq);
                            if let Ok(uri) = Uri::from_parts(parts) {
                                p.uri = uri;
                            }
                            out(Event::MessageStart(Head::new(p)));
                        }
                        None => out(Event::MessageStart(head)),
                    }
                }
                other => out(other),
            },
        ))
    }
}

/// `redirect:` — answers each request with a redirect to the same resource elsewhere.
///
/// ```yaml
/// - redirect: { status: 308, scheme: https }                 # http → https, same host and path
/// - redirect: { host: new.example.com, path_prefix: { from: /old/, to: /new/ } }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// 301, 302, 303, 307 or 308. Default 302.
    #[serde(default = "d_status")]
    pub status: u16,
    /// The scheme of the new location. Default `http`.
    #[serde(default = "d_scheme")]
    pub scheme: String,
    /// The host (and port) of the new location; default: the request's Host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A path prefix replacement; default: the same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<PrefixRewrite>,
}

fn d_status() -> u16 {
    302
}
fn d_scheme() -> String {
    "http".into()
}

impl FilterConfig for RedirectConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if ![301, 302, 303, 307, 308].contains(&self.status) {
            return Err(ConfigError::new("status", "one of 301, 302, 303, 307, 308"));
        }
        if self.scheme != "http" && self.scheme != "https" {
            return Err(ConfigError::new("scheme", "http or https"));
        }
        if let Some(p) = &self.path_prefix {
            p.check("path_prefix")?;
        }
        if let Some(h) = &self.host {
            http::uri::Authority::try_from(h.as_str()).map_err(|e| ConfigError::new("host", e))?;
        }
        Ok(Arc::new(Redirect {
            config: Arc::new(*self),
        }))
    }
}

struct Redirect {
    config: Arc<RedirectConfig>,
}

impl Redirect {
    fn location(c: &RedirectConfig, p: &request::Parts) -> Option<HeaderValue> {
        let host = match &c.host {
            Some(h) => h.clone(),
            None => p
                .headers
                .get(http::header::HOST)?
                .to_str()
                .ok()?
                .to_string(),
        };
        let pq = match &c.path_prefix {
            Some(r) => r.apply(&p.uri).map(|pq| pq.to_string()),
            None => None,
        }
        .unwrap_or_else(|| {
            p.uri
                .path_and_query()
                .map_or("/".to_string(), |pq| pq.to_string())
        });
        HeaderValue::try_from(format!("{}://{host}{pq}", c.scheme)).ok()
    }
}

impl Filter for Redirect {
    fn describe(&self) -> Description {
        Description::filter("redirect").options(&*self.config)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        let c = self.config.clone();
        let mut location = None;
        Some(Box::new(
            move |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                Event::MessageStart(head) => {
                    location = head
                        .get::<request::Parts>()
                        .and_then(|p| Redirect::location(&c, p));
                }
                Event::MessageEnd(_) => {
                    let (mut parts, ()) = http::Response::new(()).into_parts();
                    match location.take() {
                        Some(l) => {
                            parts.status =
                                StatusCode::from_u16(c.status).unwrap_or(StatusCode::FOUND);
                            parts.headers.insert(http::header::LOCATION, l);
                        }
                        // No Host to redirect to.
                        None => parts.status = StatusCode::BAD_REQUEST,
                    }
                    parts
                        .headers
                        .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                    out(Event::MessageStart(Head::new(parts)));
                    out(Event::MessageEnd(Tail::none()));
                }
                Event::StreamEnd(e) => out(Event::StreamEnd(e)),
                Event::Data(_) => {}
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrite_keeps_the_query() {
        let r = PrefixRewrite {
            from: "/api/v1/".into(),
            to: "/v1/".into(),
        };
        let uri: Uri = "/api/v1/items?page=2".parse().unwrap();
        assert_eq!(r.apply(&uri).unwrap().as_str(), "/v1/items?page=2");
        assert!(r.apply(&"/other".parse().unwrap()).is_none());
    }

    #[test]
    fn redirect_location() {
        let c = RedirectConfig {
            status: 308,
            scheme: "https".into(),
            host: None,
            path_prefix: None,
        };
        let (p, ()) = http::Request::get("/a?b")
            .header("host", "x.test:8080")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            Redirect::location(&c, &p).unwrap(),
            "https://x.test:8080/a?b"
        );
        let c = RedirectConfig {
            host: Some("new.test".into()),
            path_prefix: Some(PrefixRewrite {
                from: "/old/".into(),
                to: "/new/".into(),
            }),
            ..c
        };
        let (p, ()) = http::Request::get("/old/x")
            .header("host", "x.test")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            Redirect::location(&c, &p).unwrap(),
            "https://new.test/new/x"
        );
    }
}

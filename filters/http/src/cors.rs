//! `cors`: answers CORS preflight requests and adds CORS headers to the responses of a
//! sub-pipeline (final responses only: interim 1xx pass unchanged).

use std::sync::Arc;
use std::time::Duration;

use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{Context, Description, Event, Events, Filter, Head, SubPipeline, Tail};
use futures_util::StreamExt;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    CONTENT_LENGTH, ORIGIN, VARY,
};
use http::{HeaderValue, Method, StatusCode, request, response};
use serde::{Deserialize, Serialize};

use super::codec::is_interim;

/// `cors:` — cross-origin resource sharing in front of a pipeline.
///
/// ```yaml
/// - cors:
///     pipeline: app
///     allow_origins: ["https://app.example.com"]   # or ["*"]
///     allow_methods: [GET, POST]
///     allow_headers: [content-type, authorization]
///     max_age: 10m
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// The pipeline that answers actual (non-preflight) requests.
    pub pipeline: String,
    /// Allowed origins, exactly as browsers send them, or `*` for any.
    pub allow_origins: Vec<String>,
    /// Methods allowed in preflights. Default GET, HEAD, POST.
    #[serde(default = "d_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed in preflights. Default none.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// How long browsers may cache a preflight answer. Default 10 minutes.
    #[serde(default = "d_max_age", with = "flowgate_pipeline::serde_duration")]
    pub max_age: Duration,
    /// Allow credentials (cookies); not allowed together with `*`. Default false.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn d_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}
fn d_max_age() -> Duration {
    Duration::from_secs(600)
}

struct Policy {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

impl Policy {
    /// The value of Access-Control-Allow-Origin for this request's Origin, if allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any_origin && !self.credentials {
            return Some(HeaderValue::from_static("*"));
        }
        (self.any_origin || self.origins.contains(origin)).then(|| origin.clone())
    }

    fn decorate(&self, allow: HeaderValue, headers: &mut http::HeaderMap) {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        headers.append(VARY, HeaderValue::from_static("origin"));
        if self.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// The answer to a preflight: 204 with the policy, or 403 for a refused origin/method.
    fn preflight(&self, req: &request::Parts) -> response::Parts {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        let method_ok = req
            .headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        match self.allow(req.headers.get(ORIGIN)).filter(|_| method_ok) {
            Some(allow) => {
                parts.status = StatusCode::NO_CONTENT;
                self.decorate(allow, &mut parts.headers);
                parts
                    .headers
                    .insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
                if let Some(h) = &self.allow_headers {
                    parts
                        .headers
                        .insert(ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
                }
                parts
                    .headers
                    .insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            }
            None => {
                parts.status = StatusCode::FORBIDDEN;
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
        }
        parts
    }
}

impl FilterConfig for CorsConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        let any_origin = self.allow_origins.iter().any(|o| o == "*");
        if self.allow_origins.is_empty() {
            return Err(ConfigError::new(
                "allow_origins",
                "list the allowed origins, or \"*\"",
            ));
        }
        if any_origin && self.allow_credentials {
            return Err(ConfigError::new(
                "allow_credentials",
                "not allowed with the origin \"*\"",
            ));
        }
        let origins = self
            .allow_origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| HeaderValue::from_str(o).map_err(|e| ConfigError::new("allow_origins", e)))
            .collect::<Result<_, _>>()?;
        let methods = self
            .allow_methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes()).map_err(|e| ConfigError::new("allow_methods", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let join = |v: &[String], f: &str| {
            HeaderValue::from_str(&v.join(", ")).map_err(|e| ConfigError::new(f, e))
        };
        let policy = Policy {
            any_origin,
            origins,
            allow_methods: join(&self.allow_methods, "allow_methods")?,
            allow_headers: if self.allow_headers.is_empty() {
                None
            } else {
                Some(join(&self.allow_headers, "allow_headers")?)
            },
            max_age: HeaderValue::from(self.max_age.as_secs()),
            methods,
            credentials: self.allow_credentials,
        };
        Ok(Arc::new(Cors {
            policy: Arc::new(policy),
            sub: SubPipeline::named(self.pipeline.clone()),
            config: *self,
        }))
    }
}

/// The `cors` filter.
struct Cors {
    policy: Arc<Policy>,
    sub: SubPipeline,
    config: CorsConfig,
}

impl Filter for Cors {
    fn describe(&self) -> Description {
        Description::filter("cors")
            .options(&self.config)
            .with_sub(self.sub.name())
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        let (policy, sub, cx) = (self.policy.clone(), self.sub.clone(), cx.clone());
        // Decide on the request head (the first event of a per-request stream).
        let stream = futures_util::stream::once(async move {
            let mut input = input;
            let first = input.next().await.unwrap_or(Event::END);
            let req = match &first {
                Event::MessageStart(h) => h.get::<request::Parts>().cloned(),
                _ => None,
            };
            let Some(req) = req else {
                return sub.attach(
                    Box::pin(futures_util::stream::once(async { first }).chain(input)),
                    &cx,
                );
            };
            let preflight = req.method == Method::OPTIONS
                && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
            if preflight {
                let head = policy.preflight(&req);
                let reply = [
                    Event::MessageStart(Head::new(head)),
                    Event::MessageEnd(Tail::none()),
                    Event::END,
                ];
                return Box::pin(futures_util::stream::iter(reply)) as Events;
            }
            let allow = policy.allow(req.headers.get(ORIGIN));
            let out = sub.attach(
                Box::pin(futures_util::stream::once(async { first }).chain(input)),
                &cx,
            );
            match allow {
                None => out,
                Some(allow) => Box::pin(out.map(move |ev| match ev {
                    // The CORS fields belong on the final response, not on a 103 or 100.
                    Event::MessageStart(h) => {
                        match h.get::<response::Parts>().filter(|p| !is_interim(p.status)) {
                            Some(p) => {
                                let mut p = p.clone();
                                policy.decorate(allow.clone(), &mut p.headers);
                                Event::MessageStart(Head::new(p))
                            }
                            None => Event::MessageStart(h),
                        }
                    }
                    other => other,
                })),
            }
        })
        .flatten();
        Box::pin(stream)
    }

    fn subs(&self) -> Vec<SubPipeline> {
        vec![self.sub.clone()]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use flowgate_pipeline::Pipeline;

    #[test]
    fn only_the_final_response_gets_the_cors_fields() {
        let answer = Pipeline::builder("hints")
            .transform("hints", || {
                |ev: Event, out: &mut dyn FnMut(Event)| match ev {
                    Event::MessageStart(_) => {
                        let (mut early, ()) = http::Response::new(()).into_parts();
                        early.status = StatusCode::EARLY_HINTS;
                        out(Event::MessageStart(Head::new(early)));
                        out(crate::codec::interim_end());
                        let (ok, ()) = http::Response::new(()).into_parts();
                        out(Event::MessageStart(Head::new(ok)));
                    }
                    other => out(other),
                }
            })
            .build()
            .unwrap();
        let config: CorsConfig =
            serde_json::from_str(r#"{"pipeline": "hints", "allow_origins": ["*"]}"#).unwrap();
        let cors = Cors {
            policy: Arc::new(Policy {
                any_origin: true,
                origins: Vec::new(),
                methods: vec![Method::GET],
                allow_methods: HeaderValue::from_static("GET"),
                allow_headers: None,
                max_age: HeaderValue::from_static("600"),
                credentials: false,
            }),
            sub: answer.into(),
            config,
        };
        let (req, ()) = http::Request::get("/")
            .header(ORIGIN, "https://a.test")
            .body(())
            .unwrap()
            .into_parts();
        let out = flowgate_pipeline::testing::run_blocking(
            &cors,
            vec![
                Event::MessageStart(Head::new(req)),
                Event::MessageEnd(Tail::none()),
                Event::END,
            ],
        );
        let heads: Vec<&response::Parts> = out
            .iter()
            .filter_map(|e| match e {
                Event::MessageStart(h) => h.get::<response::Parts>(),
                _ => None,
            })
            .collect();
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[0].status, StatusCode::EARLY_HINTS);
        assert!(!heads[0].headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(heads[1].headers[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}

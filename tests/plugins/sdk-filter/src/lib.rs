//! A proxy-wasm HTTP filter written against the public Rust SDK, as an
//! Envoy user would write it. What it does is set by its configuration,
//! `key=value` settings separated by `;`:
//!
//! - `add_response_header=name:value` adds a response header;
//! - `deny_header=name` answers 403 (with a JSON body) to a request
//!   carrying that header;
//! - `rewrite_model=name` rewrites the request body's `"model"`;
//! - `count=key` counts requests in shared data under `key` and returns
//!   the count in `x-request-count`;
//! - `echo_properties=1` returns `request.path`, `request.method`,
//!   `sluice.model` and `sluice.key` in `x-seen-*` response headers;
//! - `count_chunks=1` logs, at the end, how many response body chunks
//!   it was offered.

use proxy_wasm::traits::*;
use proxy_wasm::types::*;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Clone, Default)]
struct Settings {
    add: Option<(String, String)>,
    deny: Option<String>,
    model: Option<String>,
    count: Option<String>,
    echo: bool,
    chunks: bool,
}

#[derive(Default)]
struct Root {
    settings: Settings,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some(raw) = self.get_plugin_configuration() else {
            return true;
        };
        let text = String::from_utf8_lossy(&raw).into_owned();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                log::error!("bad setting '{part}'");
                return false;
            };
            let s = &mut self.settings;
            match k {
                "add_response_header" => {
                    let Some((n, val)) = v.split_once(':') else {
                        return false;
                    };
                    s.add = Some((n.to_owned(), val.to_owned()));
                }
                "deny_header" => s.deny = Some(v.to_owned()),
                "rewrite_model" => s.model = Some(v.to_owned()),
                "count" => s.count = Some(v.to_owned()),
                "echo_properties" => s.echo = v == "1",
                "count_chunks" => s.chunks = v == "1",
                _ => {
                    log::error!("unknown setting '{k}'");
                    return false;
                }
            }
        }
        log::info!("configured: {text}");
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            s: self.settings.clone(),
            count: 0,
            chunks: 0,
        }))
    }
}

struct Filter {
    s: Settings,
    count: u64,
    chunks: u32,
}

impl Context for Filter {}

fn property(f: &Filter, path: &[&str]) -> String {
    f.get_property(path.to_vec())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| "-".to_owned())
}

impl Filter {
    fn bump(&mut self, key: &str) {
        for _ in 0..16 {
            let (value, cas) = self.get_shared_data(key);
            let n = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            if self.set_shared_data(key, Some(n.to_string().as_bytes()), cas).is_ok() {
                self.count = n;
                return;
            }
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(h) = self.s.deny.clone()
            && self.get_http_request_header(&h).is_some()
        {
            let body = format!(
                "{{\"error\":{{\"message\":\"denied by the sdk filter: header {h}\",\"type\":\"forbidden\"}}}}"
            );
            self.send_http_response(
                403,
                vec![("content-type", "application/json"), ("x-denied-by", "sdk-filter")],
                Some(body.as_bytes()),
            );
            return Action::Pause;
        }
        if let Some(key) = self.s.count.clone() {
            self.bump(&key);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end: bool) -> Action {
        let Some(model) = self.s.model.clone() else {
            return Action::Continue;
        };
        if !end {
            return Action::Pause;
        }
        let Some(body) = self.get_http_request_body(0, size) else {
            return Action::Continue;
        };
        let text = String::from_utf8_lossy(&body);
        // The value of "model", whatever it is, replaced.
        if let Some(at) = text.find("\"model\"") {
            let rest = &text[at + 7..];
            if let Some(q1) = rest.find('"') {
                let value = &rest[q1 + 1..];
                if let Some(q2) = value.find('"') {
                    let start = at + 7 + q1 + 1;
                    let new = format!("{}{}{}", &text[..start], model, &text[start + q2..]);
                    self.set_http_request_body(0, size, new.as_bytes());
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some((n, v)) = &self.s.add {
            self.add_http_response_header(n, v);
        }
        if self.s.count.is_some() {
            self.set_http_response_header("x-request-count", Some(&self.count.to_string()));
        }
        if self.s.echo {
            let seen = [
                ("x-seen-path", property(self, &["request", "path"])),
                ("x-seen-method", property(self, &["request", "method"])),
                ("x-seen-model", property(self, &["sluice", "model"])),
                ("x-seen-key", property(self, &["sluice", "key"])),
            ];
            for (n, v) in seen {
                self.add_http_response_header(n, &v);
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _: usize, _: bool) -> Action {
        self.chunks += 1;
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.s.chunks {
            log::info!("response body chunks: {}", self.chunks);
        }
    }
}

//! A finished request's metrics, found with one lookup.
//!
//! A request ends in up to ten series of seven families (`sluice_requests`,
//! `sluice_request_duration_seconds`, `sluice_tokens` ×2 and the GenAI
//! histograms), and a family lookup hashes, locks and compares the label
//! set each time: ~3,000 instructions a request. The handles of a label
//! set's series are kept under the request's labels
//! ([`super::handles::Handles`]), each made the first time it is needed —
//! so `/metrics` shows the same series it did, no series before its first
//! value.

use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::{GenAi, GenAiLabels, Metrics, RequestLabels, TokenLabels, TokenTypeLabels};

/// The kinds of token counts, in the order of [`Series`]' pairs.
const KINDS: [&str; 2] = ["input", "output"];

pub(super) type SeriesCache = super::handles::Handles<RequestLabels, Series>;

/// One label set's handles.
pub(super) struct Series {
    requests: Counter,
    duration: Histogram,
    tokens: OnceLock<[Counter; 2]>,
    server: OnceLock<Histogram>,
    operation: OnceLock<Histogram>,
    overhead: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    per_token: OnceLock<Histogram>,
    usage: OnceLock<[Histogram; 2]>,
}

impl Metrics {
    /// Records a finished request: its count and duration, its token
    /// counts, and (with a provider) the GenAI histograms.
    pub fn record_finished(&self, g: &GenAi<'_>) {
        let labels = RequestLabels {
            route: g.route,
            model: g.model.clone(),
            provider: g.provider.clone(),
            status: g.status,
        };
        let make = |labels: &RequestLabels| Series {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            tokens: OnceLock::new(),
            server: OnceLock::new(),
            operation: OnceLock::new(),
            overhead: OnceLock::new(),
            ttft: OnceLock::new(),
            per_token: OnceLock::new(),
            usage: OnceLock::new(),
        };
        self.series
            .with(labels, make, |s, labels| self.record_into(s, labels, g));
    }

    fn record_into(&self, s: &Series, l: &RequestLabels, g: &GenAi<'_>) {
        let counts = g.usage.map(|u| [u.prompt_tokens, u.completion_tokens]);
        if let Some(counts) = counts {
            let tokens = s.tokens.get_or_init(|| {
                KINDS.map(|kind| {
                    let t = TokenLabels {
                        model: l.model.clone(),
                        provider: l.provider.clone(),
                        kind,
                    };
                    self.tokens.get_or_create(&t).clone()
                })
            });
            for (c, n) in tokens.iter().zip(counts) {
                c.inc_by(n);
            }
        }
        s.requests.inc();
        s.duration.observe(g.total.as_secs_f64());
        if g.provider.is_empty() {
            return;
        }
        let op = match g.route {
            "/v1/embeddings" => "embeddings",
            _ => "chat",
        };
        let genai = || GenAiLabels {
            gen_ai_operation_name: op,
            gen_ai_request_model: l.model.clone(),
            gen_ai_provider_name: l.provider.clone(),
        };
        let of =
            |family: &super::HistogramFamily<GenAiLabels>| family.get_or_create(&genai()).clone();
        let server = s.server.get_or_init(|| of(&self.server_request_duration));
        server.observe(g.total.as_secs_f64());
        if let Some(u) = g.upstream {
            let h = s.operation.get_or_init(|| of(&self.operation_duration));
            h.observe(u.as_secs_f64());
        }
        if let Some(o) = g.overhead {
            s.overhead
                .get_or_init(|| of(&self.overhead))
                .observe(o.as_secs_f64());
        }
        if let Some(t) = g.ttft {
            let h = s.ttft.get_or_init(|| of(&self.time_to_first_token));
            h.observe(t.as_secs_f64());
            if let Some(u) = g.usage
                && u.completion_tokens > 1
            {
                let per =
                    g.total.saturating_sub(t).as_secs_f64() / (u.completion_tokens - 1) as f64;
                let h = s.per_token.get_or_init(|| of(&self.time_per_output_token));
                h.observe(per);
            }
        }
        if let Some(counts) = counts
            && g.status < 400
        {
            let usage = s.usage.get_or_init(|| {
                KINDS.map(|kind| {
                    let t = TokenTypeLabels {
                        gen_ai_operation_name: op,
                        gen_ai_request_model: l.model.clone(),
                        gen_ai_provider_name: l.provider.clone(),
                        gen_ai_token_type: kind,
                    };
                    self.token_usage.get_or_create(&t).clone()
                })
            });
            for (h, n) in usage.iter().zip(counts) {
                h.observe(n as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use sluice_core::request::Usage;

    use super::*;

    fn finished(m: &Metrics, model: &Arc<str>, status: u16, ttft: Option<Duration>) {
        let provider: Arc<str> = "openai".into();
        m.record_finished(&GenAi {
            route: "/v1/chat/completions",
            model,
            provider: &provider,
            status,
            total: Duration::from_millis(40),
            upstream: Some(Duration::from_millis(30)),
            overhead: Some(Duration::from_micros(50)),
            ttft,
            usage: Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 5,
            }),
        });
    }

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn kept_handles_record_into_the_families_series() {
        let m = Metrics::new();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        finished(&m, &a, 200, None);
        finished(&m, &a, 200, None);
        finished(&m, &b, 500, Some(Duration::from_millis(10)));
        let text = m.encode();
        let count = |start: &str| {
            line(&text, start)
                .unwrap_or_else(|| panic!("no {start} in\n{text}"))
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        };
        let a_ok = r#"route="/v1/chat/completions",model="a",provider="openai",status="200""#;
        assert_eq!(
            count(&format!("sluice_requests_total{{{a_ok}}}")),
            Some(2.0)
        );
        assert_eq!(
            count(&format!("sluice_request_duration_seconds_count{{{a_ok}}}")),
            Some(2.0)
        );
        let tokens = r#"sluice_tokens_total{model="a",provider="openai",kind="output"}"#;
        assert_eq!(count(tokens), Some(10.0));
        // Token usage histograms only for answers under 400.
        let usage = "gen_ai_client_token_usage_count{gen_ai_operation_name=\"chat\",\
                     gen_ai_request_model=\"a\",gen_ai_provider_name=\"openai\",\
                     gen_ai_token_type=\"input\"}";
        assert_eq!(count(usage), Some(2.0));
        assert!(!text.contains(
            r#"gen_ai_request_model="b",gen_ai_provider_name="openai",gen_ai_token_type"#
        ));
        // No series before its first value: only b's request had a first token.
        let ttft = "gen_ai_server_time_to_first_token_seconds_count{";
        assert_eq!(text.lines().filter(|l| l.starts_with(ttft)).count(), 1);
        assert!(line(&text, ttft).is_some_and(|l| l.contains("model=\"b\"")));
    }
}

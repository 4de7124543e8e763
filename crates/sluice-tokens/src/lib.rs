//! Token counts for a chat request, estimated with OpenAI's `o200k_base`
//! encoding (tiktoken), for `/v1/messages/count_tokens` on targets that
//! cannot count themselves. The count follows OpenAI's recipe for chat
//! messages (a few tokens of framing per message, and the reply's
//! priming); tools count as their JSON; an image counts a fixed 85 tokens.
//! For other models' tokenizers it is an estimate, and labelled as one.

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// The encoding the estimate uses.
pub const ENCODING: &str = "o200k_base";

const PER_MESSAGE: usize = 3;
const REPLY_PRIMING: usize = 3;
const PER_IMAGE: usize = 85;

fn bpe() -> &'static CoreBPE {
    static BPE: OnceLock<CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().expect("the embedded o200k_base encoding loads"))
}

/// Tokens of `text` in the encoding.
pub fn count_text(text: &str) -> usize {
    bpe().encode_ordinary(text).len()
}

/// The estimated input tokens of an OpenAI-shaped chat request (`messages`,
/// `tools`).
pub fn estimate_chat(chat: &Value) -> usize {
    let mut n = REPLY_PRIMING;
    for m in chat["messages"].as_array().into_iter().flatten() {
        n += PER_MESSAGE;
        n += m["role"].as_str().map_or(0, count_text);
        n += content(&m["content"]);
        for call in m["tool_calls"].as_array().into_iter().flatten() {
            n += call["function"]["name"].as_str().map_or(0, count_text);
            n += call["function"]["arguments"].as_str().map_or(0, count_text);
        }
    }
    if let Some(tools) = chat.get("tools").filter(|t| !t.is_null()) {
        n += count_text(&tools.to_string());
    }
    n
}

fn content(c: &Value) -> usize {
    match c {
        Value::String(s) => count_text(s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["type"].as_str() {
                Some("image_url") => PER_IMAGE,
                _ => p["text"].as_str().map_or(0, count_text),
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_follow_the_encoding_and_the_chat_recipe() {
        // o200k_base: "hello world" is two tokens.
        assert_eq!(count_text("hello world"), 2);
        let one = estimate_chat(&json!({"messages": [{"role": "user", "content": "hello world"}]}));
        // priming 3 + framing 3 + "user" 1 + 2
        assert_eq!(one, 9);
        let longer = estimate_chat(&json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hello world"},
                                         {"type": "image_url", "image_url": {"url": "x"}}]}],
            "tools": [{"type": "function", "function": {"name": "f"}}]}));
        assert!(longer > one + PER_IMAGE, "{longer}");
    }
}

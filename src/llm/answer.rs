//! An OpenAI-style answer read whole, streamed or not, into what was
//! generated ([`Generated`]): a streamed answer's content deltas joined, its
//! tool calls assembled from their pieces (by index: the name from the first
//! piece, the arguments concatenated), its finish reason and usage; a whole
//! chat completion, completion, responses-API answer or embeddings list read
//! the same way. Used off the request path, where each event is decoded.

use serde_json::Value;

use super::events::Usage;

/// What an answer generated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    pub text: String,
    pub finish_reason: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Option<Usage>,
    /// An embeddings answer's vectors, in order.
    pub embeddings: Option<Vec<Vec<f64>>>,
}

/// The most tool calls of one answer assembled.
pub const MAX_TOOL_CALLS: usize = 128;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// The server's index of the call in a streamed answer; in a whole one,
    /// its position.
    pub index: u64,
    pub name: String,
    pub arguments: String,
}

/// Reads `body`: server-sent events if it starts with an event field, else one
/// JSON answer. `None` when it is neither.
pub fn read(body: &[u8]) -> Option<Generated> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    let head = &body[start..];
    if head.starts_with(b"data:") || head.starts_with(b"event:") || head.starts_with(b":") {
        return Some(read_events(body));
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    Some(read_whole(&value))
}

fn read_whole(value: &Value) -> Generated {
    let mut generated = Generated {
        usage: usage_of(value),
        ..Generated::default()
    };
    if let Some(data) = value.get("data").and_then(Value::as_array) {
        let vectors = data
            .iter()
            .map(|item| numbers(&item["embedding"]))
            .collect();
        generated.embeddings = Some(vectors);
        return generated;
    }
    if let Some(output) = value.get("output").and_then(Value::as_array) {
        responses_output(output, &mut generated);
        return generated;
    }
    let choice = &value["choices"][0];
    generated.finish_reason = choice["finish_reason"].as_str().map(str::to_string);
    let message = &choice["message"];
    generated.text = message["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap_or_default()
        .to_string();
    for (index, call) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        generated.tool_calls.push(ToolCall {
            index: index as u64,
            name: text(&call["function"]["name"]),
            arguments: text(&call["function"]["arguments"]),
        });
    }
    generated
}

/// The responses API's `output` items: message text and function calls.
fn responses_output(output: &[Value], generated: &mut Generated) {
    for item in output {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    generated
                        .text
                        .push_str(part["text"].as_str().unwrap_or_default());
                }
            }
            Some("function_call") => generated.tool_calls.push(ToolCall {
                index: generated.tool_calls.len() as u64,
                name: text(&item["name"]),
                arguments: text(&item["arguments"]),
            }),
            _ => {}
        }
    }
    generated.finish_reason = Some("stop".to_string()).filter(|_| !output.is_empty());
}

fn read_events(body: &[u8]) -> Generated {
    let mut generated = Generated::default();
    let text = String::from_utf8_lossy(body);
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        if let Ok(event) = serde_json::from_str::<Value>(data) {
            read_event(&event, &mut generated);
        }
    }
    generated
}

fn read_event(event: &Value, generated: &mut Generated) {
    if let Some(usage) = usage_of(event) {
        generated.usage = Some(usage);
    }
    match event["type"].as_str() {
        Some("response.output_text.delta") => {
            generated
                .text
                .push_str(event["delta"].as_str().unwrap_or_default());
            return;
        }
        Some("response.completed") => {
            generated.usage = usage_of(&event["response"]).or(generated.usage);
            generated.finish_reason = Some("stop".to_string());
            return;
        }
        _ => {}
    }
    let choice = &event["choices"][0];
    if let Some(reason) = choice["finish_reason"].as_str() {
        generated.finish_reason = Some(reason.to_string());
    }
    let delta = &choice["delta"];
    let piece = delta["content"]
        .as_str()
        .or_else(|| choice["text"].as_str());
    generated.text.push_str(piece.unwrap_or_default());
    for call in delta["tool_calls"].as_array().into_iter().flatten() {
        let Some(assembled) = tool_call(generated, call["index"].as_u64().unwrap_or(0)) else {
            continue;
        };
        if let Some(name) = call["function"]["name"].as_str() {
            assembled.name.push_str(name);
        }
        if let Some(arguments) = call["function"]["arguments"].as_str() {
            assembled.arguments.push_str(arguments);
        }
    }
}

/// The tool call a streamed piece with `index` belongs to, in the order the
/// calls first appear (the index is the server's word, not a position: a
/// huge one must not make room for that many calls); `None` past
/// [`MAX_TOOL_CALLS`], whose pieces are left out.
fn tool_call(generated: &mut Generated, index: u64) -> Option<&mut ToolCall> {
    let calls = &mut generated.tool_calls;
    let at = match calls.iter().position(|call| call.index == index) {
        Some(at) => at,
        None if calls.len() < MAX_TOOL_CALLS => {
            calls.push(ToolCall {
                index,
                ..ToolCall::default()
            });
            calls.len() - 1
        }
        None => return None,
    };
    calls.get_mut(at)
}

fn usage_of(value: &Value) -> Option<Usage> {
    let usage = value.get("usage").filter(|u| u.is_object())?;
    serde_json::from_value(usage.clone()).ok()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_chat_answer_is_joined_and_its_tool_call_assembled() {
        let body = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"weather\",\"arguments\":\"{\\\"ci\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\": 1}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
            "data: [DONE]\n\n",
        );
        let generated = read(body.as_bytes()).unwrap();
        assert_eq!(generated.text, "Hello world");
        assert_eq!(generated.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            generated.tool_calls,
            [ToolCall {
                index: 0,
                name: "weather".into(),
                arguments: "{\"city\": 1}".into()
            }]
        );
        assert_eq!(generated.usage.unwrap().completion_tokens, 4);
    }

    #[test]
    fn whole_answers_of_every_kind_are_read() {
        let chat = br#"{"choices":[{"message":{"content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        assert_eq!(read(chat).unwrap().text, "Hi");
        let completion = br#"{"choices":[{"text":"Yo","finish_reason":"length"}]}"#;
        assert_eq!(
            read(completion).unwrap().finish_reason.as_deref(),
            Some("length")
        );
        let embeddings = br#"{"data":[{"embedding":[1,0]},{"embedding":[0.5,0.5]}]}"#;
        assert_eq!(read(embeddings).unwrap().embeddings.unwrap()[1], [0.5, 0.5]);
        let responses = br#"{"output":[{"type":"message","content":[{"type":"output_text","text":"Hey"}]}],"usage":{"input_tokens":2,"output_tokens":1}}"#;
        let read_back = read(responses).unwrap();
        assert_eq!(read_back.text, "Hey");
        assert_eq!(read_back.usage.unwrap().completion_tokens, 1);
        assert!(read(b"not an answer").is_none());
    }

    #[test]
    fn tool_calls_are_kept_by_their_index_and_a_huge_index_makes_no_room() {
        let piece = |index: u64, name: &str| {
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":[{{\"index\":{index},\"function\":{{\"name\":\"{name}\"}}}}]}}}}]}}\n\n"
            )
        };
        let mut body = piece(u64::MAX, "far") + &piece(1, "b") + &piece(u64::MAX, "away");
        for index in 2..(MAX_TOOL_CALLS as u64 + 10) {
            body += &piece(index, "x");
        }
        let generated = read(body.as_bytes()).unwrap();
        assert_eq!(generated.tool_calls.len(), MAX_TOOL_CALLS);
        assert_eq!(generated.tool_calls[0].name, "faraway");
        assert_eq!(
            (
                generated.tool_calls[1].index,
                generated.tool_calls[1].name.as_str()
            ),
            (1, "b")
        );
    }
}

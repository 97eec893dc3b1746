use super::*;

const STREAM: &str = concat!(
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"finish_reason\":null}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
);
const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

fn whole_stream() -> String {
    format!("{STREAM}{USAGE}{DONE}")
}

/// Reads `text` cut at `cuts`; answers what was passed on and what was seen.
fn read_in_pieces(text: &str, cuts: &[usize], strip: bool) -> (String, Seen, u64) {
    let mut reader = EventReader::new(strip);
    let (mut passed, mut counted, mut from) = (Vec::new(), 0, 0);
    for &cut in cuts.iter().chain([text.len()].iter()) {
        let read = reader.read(Bytes::copy_from_slice(&text.as_bytes()[from..cut]));
        passed.extend_from_slice(&read.pass);
        counted += read.content_events;
        from = cut;
    }
    (String::from_utf8(passed).unwrap(), reader.seen, counted)
}

#[test]
fn content_events_the_finish_reason_and_usage_are_seen() {
    let (passed, seen, counted) = read_in_pieces(&whole_stream(), &[], false);
    assert_eq!(passed, whole_stream());
    assert_eq!(
        seen.content_events, 2,
        "the role-only and the finish events carry no content"
    );
    assert_eq!(counted, 2);
    assert_eq!(seen.finish_reason, Some(FinishReason::Length));
    assert_eq!(
        seen.usage,
        Some(Usage {
            prompt_tokens: 5,
            completion_tokens: 2
        })
    );
}

#[test]
fn events_split_anywhere_read_the_same_and_pass_on_unchanged() {
    let text = whole_stream();
    for cut in 1..text.len() {
        for second in [cut + 1, cut + 37, text.len()] {
            let cuts: Vec<usize> = [cut, second]
                .into_iter()
                .filter(|c| *c < text.len())
                .collect();
            let (passed, seen, counted) = read_in_pieces(&text, &cuts, false);
            assert_eq!(passed, text, "cut at {cuts:?}");
            assert_eq!((seen.content_events, counted), (2, 2), "cut at {cuts:?}");
            assert!(seen.usage.is_some(), "cut at {cuts:?}");
        }
    }
}

#[test]
fn a_usage_event_the_client_did_not_ask_for_is_left_out_wherever_frames_are_cut() {
    let text = whole_stream();
    let expected = format!("{STREAM}{DONE}");
    for cut in 0..text.len() {
        let (passed, seen, _) = read_in_pieces(&text, &[cut], true);
        assert_eq!(passed, expected, "cut at {cut}");
        assert_eq!(seen.usage.map(|u| u.completion_tokens), Some(2));
    }
}

#[test]
fn completions_tool_calls_and_crlf_events_count_as_content() {
    let text = concat!(
        "data: {\"choices\":[{\"text\":\"Hi\",\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n",
        "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n",
    );
    let (_, seen, _) = read_in_pieces(text, &[], false);
    assert_eq!(seen.content_events, 2);
    assert_eq!(seen.finish_reason, Some(FinishReason::Stop));
}

#[test]
fn a_whole_answer_gives_its_usage_and_finish_reason() {
    let body = br#"{"choices":[{"message":{"content":"x"},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":9}}"#;
    let seen = whole_answer(body);
    assert_eq!(seen.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(seen.usage.unwrap().completion_tokens, 9);
    let responses = br#"{"output":[],"usage":{"input_tokens":4,"output_tokens":6}}"#;
    assert_eq!(whole_answer(responses).usage.unwrap().completion_tokens, 6);
    assert_eq!(whole_answer(b"not json"), Seen::default());
}

#[test]
fn a_stream_ending_without_a_blank_line_is_passed_on_whole_at_its_end() {
    let text = format!("{STREAM}{USAGE}data: [DONE]");
    let mut reader = EventReader::new(true);
    let mut passed = reader.read(Bytes::from(text)).pass.to_vec();
    passed.extend_from_slice(&reader.rest());
    assert_eq!(
        String::from_utf8(passed).unwrap(),
        format!("{STREAM}data: [DONE]")
    );
}

#[test]
fn keys_spaced_as_pretty_printers_write_them_are_read() {
    let text = concat!(
        "data: {\"choices\": [{\"delta\": {\"content\" : \"Hi\"}, \"finish_reason\": null}]}\n\n",
        "data: {\"choices\": [{\"delta\": {\"tool_calls\": [ {\"index\": 0}]}}]}\n\n",
        "data: {\"choices\": [{\"delta\": {}, \"finish_reason\" :\"stop\"}]}\n\n",
        "data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 2}}\n\n",
    );
    let (passed, seen, _) = read_in_pieces(text, &[], true);
    assert_eq!(seen.content_events, 2);
    assert_eq!(seen.finish_reason, Some(FinishReason::Stop));
    assert_eq!(seen.usage.map(|u| u.completion_tokens), Some(2));
    assert!(!passed.contains("usage"), "the usage event is left out");
}

#[test]
fn keys_inside_generated_text_are_not_read_as_fields() {
    let text = "data: {\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":null,\"x\":\"say \\\"finish_reason\\\":\\\"length\\\"\"}]}\n\n";
    let (_, seen, _) = read_in_pieces(text, &[], false);
    assert_eq!(seen.content_events, 0);
    assert_eq!(seen.finish_reason, None);
}

#[test]
fn responses_api_events_count_deltas_and_read_usage_from_the_completed_response() {
    let text = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"status\":\"in_progress\"}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\" there\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi there\"}]}],\"usage\":{\"input_tokens\":4,\"output_tokens\":2}}}\n\n",
    );
    let (passed, seen, _) = read_in_pieces(text, &[], true);
    assert_eq!(
        seen.content_events, 2,
        "the completed event's whole text is not a delta"
    );
    assert_eq!(
        seen.usage,
        Some(Usage {
            prompt_tokens: 4,
            completion_tokens: 2
        })
    );
    assert_eq!(
        passed, text,
        "the completed event is not a usage-only event"
    );
}

#[test]
fn an_event_that_never_ends_is_passed_on_unread_and_reading_resumes_after_it() {
    let long = format!("data: {}", "x".repeat(MAX_EVENT_BYTES + 10));
    let after = format!("\n\n{USAGE}{DONE}");
    for strip in [false, true] {
        let mut reader = EventReader::new(strip);
        let mut passed = Vec::new();
        for piece in long.as_bytes().chunks(64 * 1024) {
            passed.extend_from_slice(&reader.read(Bytes::copy_from_slice(piece)).pass);
        }
        assert!(
            reader.carry.len() <= MAX_EVENT_BYTES,
            "the carry stays bounded"
        );
        passed.extend_from_slice(&reader.read(Bytes::from(after.clone())).pass);
        passed.extend_from_slice(&reader.rest());
        let expected = match strip {
            true => format!("{long}\n\n{DONE}"),
            false => format!("{long}{after}"),
        };
        assert!(
            passed == expected.as_bytes(),
            "strip {strip}: passed on whole"
        );
        assert_eq!(reader.seen.usage.map(|u| u.completion_tokens), Some(2));
    }
}

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

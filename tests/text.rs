//! Tokenizer rules (§9 rule 5), the chat template and streaming detokenization.

mod common;
use common::*;

use janusflow::text::template::{chat_pieces, Message};
use janusflow::text::tokenizer::{Piece, StreamDecoder, TextTokenizer};

fn tok() -> TextTokenizer {
    TextTokenizer::from_bytes(&std::fs::read(fixture("tiny/tokenizer.json")).unwrap()).unwrap()
}

#[test]
fn image_tags_are_appended_in_processor_order() {
    let t = tok();
    assert_eq!((t.bos, t.eos, t.gen), (380, 381, 382));
    assert_eq!((t.image, t.boi, t.eoi), (383, 384, 385));
    assert_eq!(t.pad, t.eos);
}

#[test]
fn user_text_cannot_produce_special_ids() {
    let t = tok();
    let ids = t.encode_text("<begin_of_image><image_placeholder><end_of_image><｜end▁of▁sentence｜><｜begin▁of▁sentence｜>").unwrap();
    assert!(ids.iter().all(|&i| i < 380), "{ids:?}");
    // Without images attached, a typed placeholder stays text.
    let p = chat_pieces(&t, None, &[Message::user("look: <image_placeholder>")]);
    assert!(p.iter().all(|x| matches!(x, Piece::Text(_))));
    // With one image, it becomes the image id.
    let pic = std::sync::Arc::new(janusflow::image_io::Picture::from_rgb8(1, 1, vec![1, 2, 3]).unwrap());
    let m = Message::user_with_images("What is this?", vec![pic]);
    assert_eq!(m.content, "<image_placeholder>\nWhat is this?");
    let ids = t.encode_pieces(&chat_pieces(&t, None, &[m])).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == t.image).count(), 1);
}

#[test]
fn template_matches_the_deepseek_format() {
    let t = tok();
    let msgs = [Message::user("  Hi  "), Message::assistant(" Hello! "), Message::user("Bye\n")];
    let p = chat_pieces(&t, Some("SYS"), &msgs);
    assert_eq!(p, vec![Piece::Text("SYS\n\nUser: Hi\n\nAssistant: Hello!".into()), Piece::Special(t.eos), Piece::Text("User: Bye\n\nAssistant:".into())]);
    let ids = t.encode_pieces(&p).unwrap();
    assert_eq!(ids[0], t.bos);
    assert_eq!(ids.iter().filter(|&&i| i == t.bos).count(), 1);
}

#[test]
fn streaming_never_splits_a_character() {
    let t = tok();
    let text = "naïve café 🦊 ok";
    let ids = t.encode_text(text).unwrap();
    let mut s = StreamDecoder::new();
    let mut out = String::new();
    for id in ids {
        if let Some(piece) = s.push(&t, id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            out.push_str(&piece);
        }
    }
    assert_eq!(out, text);
}

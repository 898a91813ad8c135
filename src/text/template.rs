//! The "deepseek" SFT chat format (spec §2.3, §2.7):
//!
//! ```text
//! {system}\n\nUser: {msg}\n\nAssistant: {reply}<｜end▁of▁sentence｜>User: {msg}\n\nAssistant:
//! ```
//! Messages are stripped; the system prompt is used for chat and understanding, not for generation.

use std::sync::Arc;

use super::tokenizer::{Piece, TextTokenizer, IMAGE_TAG};
use crate::image_io::Picture;

pub const SYSTEM_PROMPT: &str = "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Images attached to this message, in order; each `<image_placeholder>` in `content` marks
    /// where one goes (the counts must match).
    #[serde(skip)]
    pub images: Vec<Arc<Picture>>,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message { role: Role::User, content: content.into(), images: Vec::new() }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Message { role: Role::Assistant, content: content.into(), images: Vec::new() }
    }
    /// A user message with images. Without any `<image_placeholder>` in `text`, one placeholder per
    /// image is put in front, one per line (the demo's `"<image_placeholder>\n" + question`).
    pub fn user_with_images(text: &str, images: Vec<Arc<Picture>>) -> Self {
        let content =
            if images.is_empty() || text.contains(IMAGE_TAG) { text.to_string() } else { format!("{}{text}", format!("{IMAGE_TAG}\n").repeat(images.len())) };
        Message { role: Role::User, content, images }
    }
    /// Placeholders in the content (only meaningful when images are attached).
    pub fn placeholders(&self) -> usize {
        self.content.trim().matches(IMAGE_TAG).count()
    }
}

/// Pieces of the understanding/chat prompt, ending with the open "Assistant:" turn.
/// In messages with images, each `<image_placeholder>` becomes the image-tag id; elsewhere it is text.
pub fn chat_pieces(tok: &TextTokenizer, system: Option<&str>, messages: &[Message]) -> Vec<Piece> {
    let mut text = String::new();
    let mut pieces = Vec::new();
    if let Some(s) = system.map(str::trim).filter(|s| !s.is_empty()) {
        text.push_str(s);
        text.push_str("\n\n");
    }
    for m in messages {
        match m.role {
            Role::User => {
                text.push_str("User: ");
                let content = m.content.trim();
                if !m.images.is_empty() {
                    let mut parts = content.split(IMAGE_TAG).peekable();
                    while let Some(part) = parts.next() {
                        text.push_str(part);
                        if parts.peek().is_some() {
                            pieces.push(Piece::Text(std::mem::take(&mut text)));
                            pieces.push(Piece::Special(tok.image));
                        }
                    }
                } else {
                    text.push_str(content);
                }
                text.push_str("\n\n");
            }
            Role::Assistant => {
                text.push_str("Assistant: ");
                text.push_str(m.content.trim());
                pieces.push(Piece::Text(std::mem::take(&mut text)));
                pieces.push(Piece::Special(tok.eos));
            }
        }
    }
    text.push_str("Assistant:");
    pieces.push(Piece::Text(text));
    // The reference strips the assembled prompt; only the very first text can have leading space.
    if let Some(Piece::Text(t)) = pieces.first_mut() {
        *t = t.trim_start().to_string();
    }
    pieces
}

// A small Markdown subset for model replies, built as DOM nodes. The model's text only ever
// becomes Text nodes or the value of an href checked to be http(s): raw HTML in a reply shows as
// the characters it is made of, and no element is created from it (no innerHTML anywhere here).
//
// Blocks: paragraphs (a single newline is a line break), # headings, fenced code (``` or ~~~),
// - * + and 1. lists (nested by indentation), > quotes, --- rules. Inline: **bold**, *italic*
// (and __ _ at word boundaries), ~~struck~~, `code`, [text](http(s) URL), bare http(s) URLs,
// backslash escapes.
//
// renderInto(container, text) is what streaming calls on every update: blocks whose source has
// not changed keep their nodes, so each update rebuilds only the block text is arriving in.

const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const ITEM = /^([ \t]*)(?:([-*+])|(\d{1,9})[.)])(?:[ \t]+(.*)|$)/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const BLANK = /^[ \t]*$/;
/** Nesting deeper than this (quotes in quotes, emphasis in emphasis) stays text. */
const MAX_DEPTH = 8;

/** Splits lines into blocks: {type, src (the lines it was made from), ...}. */
function blocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const start = i;
    let m;
    if (BLANK.test(line)) {
      i++;
      continue;
    }
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i++;
      // An unclosed fence (still streaming) runs to the end.
      while (i < lines.length && !new RegExp(`^ {0,3}${fence[0] === '`' ? '`' : '~'}{${fence.length},}[ \\t]*$`).test(lines[i])) body.push(lines[i++]);
      if (i < lines.length) i++;
      out.push({ type: 'code', lang: m[2].trim().split(/\s/)[0], text: body.join('\n'), src: lines.slice(start, i).join('\n') });
    } else if ((m = HEADING.exec(line))) {
      i++;
      out.push({ type: 'heading', level: m[1].length, text: m[2] || '', src: line });
    } else if (RULE.test(line)) {
      i++;
      out.push({ type: 'rule', src: line });
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i++;
      }
      out.push({ type: 'quote', lines: inner, src: lines.slice(start, i).join('\n') });
    } else if (ITEM.test(line)) {
      // The list runs over items, their indented continuation lines, and blank lines between items.
      i++;
      while (i < lines.length) {
        if (ITEM.test(lines[i]) || (!BLANK.test(lines[i]) && /^[ \t]/.test(lines[i]))) i++;
        else if (BLANK.test(lines[i]) && i + 1 < lines.length && (ITEM.test(lines[i + 1]) || /^[ \t]+\S/.test(lines[i + 1]))) i++;
        else break;
      }
      out.push({ type: 'list', lines: lines.slice(start, i), src: lines.slice(start, i).join('\n') });
    } else {
      const para = [line];
      i++;
      while (i < lines.length && !BLANK.test(lines[i]) && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) && !RULE.test(lines[i]) && !QUOTE.test(lines[i]) && !ITEM.test(lines[i])) para.push(lines[i++]);
      out.push({ type: 'para', lines: para, src: para.join('\n') });
    }
  }
  return out;
}

function h(tag, ...children) {
  const e = document.createElement(tag);
  e.append(...children);
  return e;
}

/** Inline text lines joined with <br>. */
function linesInline(lines, depth) {
  const f = document.createDocumentFragment();
  lines.forEach((l, k) => {
    if (k) f.append(h('br'));
    f.append(inline(l.trim(), depth));
  });
  return f;
}

function build(b, depth) {
  switch (b.type) {
    case 'code': {
      const code = h('code');
      code.textContent = b.text;
      if (b.lang) code.dataset.lang = b.lang;
      return h('pre', code);
    }
    case 'heading':
      // Replies sit under the element's own h2: # is h3, ## h4, the rest h5 and h6.
      return h(`h${Math.min(b.level + 2, 6)}`, inline(b.text.trim(), depth));
    case 'rule':
      return h('hr');
    case 'quote':
      if (depth >= MAX_DEPTH) return h('p', linesInline(b.lines, depth));
      return h('blockquote', ...blocks(b.lines).map((x) => build(x, depth + 1)));
    case 'list':
      return list(b.lines, depth);
    default:
      return h('p', linesInline(b.lines, depth));
  }
}

/** A (possibly nested) list from its lines; indentation deeper than an item's opens a sub-list. */
function list(lines, depth) {
  const width = (s) => s.replace(/\t/g, '    ').length;
  const roots = []; // top-level lists: a change of kind (- to 1.) starts another one
  const stack = []; // {indent, el, ordered, li}
  let text = null; // the current item's lines
  const flush = () => {
    if (text) stack[stack.length - 1].li.append(linesInline(text, depth));
    text = null;
  };
  const open = (indent, ordered) => ({ indent, ordered, li: null, el: document.createElement(ordered ? 'ol' : 'ul') });
  for (const line of lines) {
    const m = ITEM.exec(line);
    if (!m) {
      if (!BLANK.test(line) && text) text.push(line);
      continue;
    }
    flush();
    const indent = width(m[1]);
    const ordered = m[3] != null;
    while (stack.length > 1 && stack[stack.length - 1].indent > indent) stack.pop();
    let top = stack[stack.length - 1];
    if (!top || (stack.length === 1 && indent <= top.indent + 1 && top.ordered !== ordered)) {
      top = open(indent, ordered);
      roots.push(top.el);
      stack.length = 0;
      stack.push(top);
    } else if (indent > top.indent + 1 && stack.length < MAX_DEPTH) {
      const sub = open(indent, ordered);
      top.li.append(sub.el);
      stack.push((top = sub));
    }
    if (ordered && !top.el.children.length && Number(m[3]) !== 1) top.el.start = Number(m[3]);
    top.li = document.createElement('li');
    top.el.append(top.li);
    text = [m[4] || ''];
  }
  flush();
  return roots.length === 1 ? roots[0] : h('div', ...roots);
}

/** An http(s) URL as an absolute href, or null (javascript:, data:, relative, unparsable). */
export function safeUrl(raw) {
  try {
    const u = new URL(raw);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch {
    return null;
  }
}

function link(href, ...children) {
  const a = h('a', ...children);
  a.href = href;
  a.target = '_blank';
  a.rel = 'noopener noreferrer';
  return a;
}

const PUNCT = /[!-/:-@[-`{-~]/;
const LINK = /\[((?:[^\[\]\\]|\\.){0,1000})\]\(\s*<?([^\s()<>]*)>?(?:\s+"[^"]*")?\s*\)/y;
const AUTO = /https?:\/\/[^\s<>"'`]*[^\s<>"'`.,:;!?)\]}*_~]/y;
const AUTO_BRACKET = /<(https?:\/\/[^\s<>]+)>/y;

/**
 * Inline Markdown of one line as a fragment. Delimiters that are never closed are text, so a
 * half-streamed "**bo" shows as typed until its closing "**" arrives.
 */
export function inline(s, depth = 0, links = true) {
  const f = document.createDocumentFragment();
  let buf = '';
  const text = () => {
    if (buf) f.append(buf);
    buf = '';
  };
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    if (c === '\\' && i + 1 < s.length && PUNCT.test(s[i + 1])) {
      buf += s[i + 1];
      i += 2;
      continue;
    }
    if (c === '`') {
      let n = 1;
      while (s[i + n] === '`') n++;
      const ticks = '`'.repeat(n);
      let j = s.indexOf(ticks, i + n);
      while (j !== -1 && s[j + n] === '`') {
        let k = j;
        while (s[k] === '`') k++;
        j = s.indexOf(ticks, k);
      }
      if (j !== -1) {
        text();
        let body = s.slice(i + n, j);
        if (body.length > 2 && body[0] === ' ' && body[body.length - 1] === ' ') body = body.slice(1, -1);
        const code = h('code');
        code.textContent = body;
        f.append(code);
        i = j + n;
        continue;
      }
      buf += ticks;
      i += n;
      continue;
    }
    if (links && c === '[') {
      LINK.lastIndex = i;
      const m = LINK.exec(s);
      const href = m && safeUrl(m[2]);
      if (m && href) {
        text();
        f.append(link(href, inline(m[1], depth + 1, false)));
        i = LINK.lastIndex;
        continue;
      }
    }
    // Bare URLs: `<https://…>` (the URL is group 1) or `https://…` at a word start (the match).
    const auto = !links ? null : c === '<' ? [AUTO_BRACKET, 1] : c === 'h' && (i === 0 || !/\w/.test(s[i - 1])) ? [AUTO, 0] : null;
    if (auto) {
      const [re, g] = auto;
      re.lastIndex = i;
      const m = re.exec(s);
      const href = m && safeUrl(m[g]);
      if (href) {
        text();
        f.append(link(href, m[g]));
        i = re.lastIndex;
        continue;
      }
    }
    if ((c === '*' || c === '_' || c === '~') && depth < MAX_DEPTH) {
      const span = emphasis(s, i);
      if (span) {
        text();
        const e = h(span.tag, inline(s.slice(i + span.n, span.end), depth + 1, links));
        f.append(span.em ? h('em', e) : e);
        i = span.end + span.n;
        continue;
      }
      // An unmatched run of delimiters is text as a whole (so "***" is not retried per star).
      let n = 1;
      while (s[i + n] === c) n++;
      buf += s.slice(i, i + n);
      i += n;
      continue;
    }
    buf += c;
    i++;
  }
  text();
  return f;
}

/**
 * The emphasis opening at `i`: {tag, n (delimiter length), end (index of the closing delimiter)}
 * or null. An opener is followed by a non-space, a closer preceded by one; `_` only counts at word
 * boundaries (snake_case stays as it is); `~` only doubled.
 */
function emphasis(s, i) {
  const c = s[i];
  let run = 1;
  while (s[i + run] === c) run++;
  const word = (k) => k >= 0 && k < s.length && /[\p{L}\p{N}]/u.test(s[k]);
  const sizes = c === '~' ? [2] : run >= 3 ? [3, 2, 1] : run === 2 ? [2, 1] : [1];
  for (const n of sizes) {
    if (n > run) continue;
    const after = s[i + n];
    if (after === undefined || /\s/.test(after)) continue;
    if (c === '_' && word(i - 1)) continue;
    const delim = c.repeat(n);
    for (let j = s.indexOf(delim, i + n + (n === 1 && run > 1 ? 1 : 0)); j !== -1; j = s.indexOf(delim, j + 1)) {
      if (j === i + n) continue; // empty
      if (/\s/.test(s[j - 1])) continue;
      // A single delimiter must not be half of a double one (the closer of `*a **b** c*`).
      if (n === 1 && (s[j + 1] === c || s[j - 1] === c)) continue;
      if (c === '_' && word(j + n)) continue;
      return { tag: c === '~' ? 's' : n === 1 ? 'em' : 'strong', em: n === 3, n, end: j };
    }
  }
  return null;
}

/** The blocks of `text` as a fragment. */
export function renderMarkdown(text) {
  const f = document.createDocumentFragment();
  for (const b of blocks(splitLines(text))) f.append(build(b, 0));
  return f;
}

function splitLines(text) {
  return String(text).replace(/\r\n/g, '\n').split('\n');
}

const rendered = new WeakMap(); // container → [{src, node}]

/**
 * Renders `text` into `container`, keeping the nodes of leading blocks whose source is unchanged
 * (streaming appends at the end, so only the last block or two are built again).
 */
export function renderInto(container, text) {
  const list = blocks(splitLines(text));
  const prev = rendered.get(container) || [];
  let keep = 0;
  while (keep < prev.length && keep < list.length && prev[keep].src === list[keep].src && prev[keep].node.parentNode === container) keep++;
  for (const p of prev.slice(keep)) p.node.remove();
  const next = prev.slice(0, keep);
  for (const b of list.slice(keep)) {
    const node = build(b, 0);
    container.append(node);
    next.push({ src: b.src, node });
  }
  rendered.set(container, next);
}

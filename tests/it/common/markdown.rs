//! Just enough Markdown for the tests that read the documentation: sections,
//! fenced code blocks, heading anchors and link destinations.

/// A fenced code block: its info string (`sh`, `python`, or empty) and its
/// body, each line ending with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    pub(crate) info: String,
    pub(crate) body: String,
}

/// A line of `markdown` outside fenced code blocks, with its number (from 1).
pub(crate) fn prose_lines(markdown: &str) -> Vec<(usize, &str)> {
    let mut in_fence = false;
    let mut prose = Vec::new();
    for (index, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence {
            prose.push((index + 1, line));
        }
    }
    prose
}

/// The heading level of `line` (`## Title` is 2), if it is a heading.
fn heading_level(line: &str) -> Option<usize> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    (1..=6)
        .contains(&level)
        .then_some(level)
        .filter(|&level| line[level..].starts_with(' '))
}

/// The part of `markdown` under the heading line `heading` (`## Title`), up
/// to the next heading of the same or a higher level outside code blocks.
/// Panics when there is no such heading.
pub(crate) fn section<'a>(markdown: &'a str, heading: &str) -> &'a str {
    let level = heading_level(heading).expect("a heading such as `## Title`");
    let mut start = None;
    let mut in_fence = false;
    let mut offset = 0;
    for line in markdown.split_inclusive('\n') {
        let text = line.trim_end_matches('\n');
        if text.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence {
            match start {
                None if text == heading => start = Some(offset + line.len()),
                Some(from) if heading_level(text).is_some_and(|l| l <= level) => {
                    return &markdown[from..offset];
                }
                _ => {}
            }
        }
        offset += line.len();
    }
    let from = start.unwrap_or_else(|| panic!("no heading {heading:?}"));
    &markdown[from..]
}

/// The fenced code blocks of `markdown`, in order.
pub(crate) fn fences(markdown: &str) -> Vec<Fence> {
    let mut fences = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if let Some(info) = line.trim_start().strip_prefix("```") {
            let body: String = lines
                .by_ref()
                .take_while(|l| l.trim_start() != "```")
                .map(|l| format!("{l}\n"))
                .collect();
            fences.push(Fence {
                info: info.trim().to_owned(),
                body,
            });
        }
    }
    fences
}

/// `line` with each inline code span (`` `...` ``) blanked out.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// GitHub's anchor for a heading's text: lower case, letters, digits, `-`
/// and `_` kept, spaces turned into `-`, everything else dropped.
fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of every heading of `markdown`, as GitHub makes them (a
/// repeated heading gets `-1`, `-2`, ...).
pub(crate) fn anchors(markdown: &str) -> Vec<String> {
    let mut anchors: Vec<String> = Vec::new();
    for (_, line) in prose_lines(markdown) {
        if let Some(level) = heading_level(line) {
            let base = slug(&line[level..]);
            let repeats = anchors
                .iter()
                .filter(|a| {
                    **a == base
                        || a.strip_prefix(&format!("{base}-"))
                            .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count();
            anchors.push(if repeats == 0 {
                base
            } else {
                format!("{base}-{repeats}")
            });
        }
    }
    anchors
}

/// The destination of every link and image of `markdown` outside code
/// (`[text](dest)`, `![alt](dest)`, `[label]: dest`), with its line number.
pub(crate) fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (number, line) in prose_lines(markdown) {
        let line = without_code_spans(line);
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some((_, dest)) = trimmed.split_once("]: ")
        {
            links.push((
                number,
                dest.split_whitespace().next().unwrap_or("").to_owned(),
            ));
            continue;
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            // The destination ends at the `)` that balances the opening one.
            let mut depth = 0;
            let end = after
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' if depth == 0 => return true,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    false
                })
                .map_or(after.len(), |(i, _)| i);
            let dest = after[..end].split_whitespace().next().unwrap_or("");
            let dest = dest.trim_start_matches('<').trim_end_matches('>');
            links.push((number, dest.to_owned()));
            rest = &after[end..];
        }
    }
    links
}

#[test]
fn markdown_is_read_as_github_does() {
    let text = "# Top\n\n## A `code` title: (x)\n```sh\n## not a heading\n[no](link)\n```\nSee [it](docs/a.md#b) and ![img](p.png \"t\"), not `[code](x)`.\n[ref]: https://example.com\n## A `code` title: (x)\n### Sub\n## End\n";
    assert_eq!(
        anchors(text),
        ["top", "a-code-title-x", "a-code-title-x-1", "sub", "end"]
    );
    let links: Vec<String> = links(text).into_iter().map(|(_, d)| d).collect();
    assert_eq!(links, ["docs/a.md#b", "p.png", "https://example.com"]);
    let part = section(text, "## A `code` title: (x)");
    assert!(part.starts_with("```sh\n## not a heading\n"), "{part}");
    assert!(part.ends_with("https://example.com\n"), "{part}");
    assert_eq!(
        fences(part),
        [Fence {
            info: "sh".to_owned(),
            body: "## not a heading\n[no](link)\n".to_owned()
        }]
    );
    assert_eq!(section(text, "## End"), "");
}

// Package docs checks the repository's citations of its own documents, so
// that a reader who follows one lands somewhere. It has no code: its test
// runs in make test (test-unit) and fails when
//
//   - a section sign citation in a tracked file (Go, Markdown, Makefile,
//     JavaScript, HTML, YAML, shell) names a section that PROTOCOL.md has
//     no heading for ("## N." or "### N.M"). A citation belongs to
//     PROTOCOL.md unless an RFC or an issue number comes right before it
//     ("RFC 6455" then the sign, "Issue 16" then the sign), or it
//     continues a list that began with one ("RFC 6455 ... 5.2, ... 5.4");
//   - a file names a document that is not in the repository: a Markdown
//     file no tracked file is named like, or a protocol reference kept
//     beside the repository rather than in it (the patterns are in the
//     test), which a reader of this repository cannot open.
package docs

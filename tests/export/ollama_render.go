// Renders an Ollama TEMPLATE with Go's own text/template, the way Ollama's server does
// (template/template.go: collate, then Execute with .System and .Messages), for the twinlm tests.
//
// stdin: {"template": "...", "cases": [[{"role": "...", "content": "..."}, ...], ...]}
// stdout: a JSON list with, per case, {"text": "..."} or {"error": "..."}.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"time"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// templateMessage mirrors the fields Ollama passes for each message.
type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	ToolName   string
	ToolCallID string
}

type input struct {
	Template string      `json:"template"`
	Cases    [][]message `json:"cases"`
}

type output struct {
	Text  *string `json:"text,omitempty"`
	Error string  `json:"error,omitempty"`
}

// Stand-ins for the functions Ollama adds to templates (the twinlm template uses none of them).
var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":      func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate":    func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
	"toTypeScriptType": func(v any) string { return "any" },
}

// collate is Ollama's: system texts joined by a blank line, consecutive messages of one role
// (tool results aside) merged with a blank line, system messages kept in the list.
func collate(msgs []message) (string, []*templateMessage) {
	var system []string
	var collated []*templateMessage
	for _, m := range msgs {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == m.Role && m.Role != "tool" {
			collated[n-1].Content += "\n\n" + m.Content
		} else {
			collated = append(collated, &templateMessage{Role: m.Role, Content: m.Content})
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(3)
	}
	out := make([]output, 0, len(in.Cases))
	for _, msgs := range in.Cases {
		system, messages := collate(msgs)
		var b bytes.Buffer
		err := tmpl.Execute(&b, map[string]any{
			"System":   system,
			"Messages": messages,
			"Tools":    nil,
			"Response": "",
			"Think":    false,
		})
		if err != nil {
			out = append(out, output{Error: err.Error()})
			continue
		}
		text := b.String()
		out = append(out, output{Text: &text})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(4)
	}
}

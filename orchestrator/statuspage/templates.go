package statuspage

import (
	"fmt"
	"html/template"
	"slices"
	"time"
)

// pageNames are the pages; each is templates/<name>.html parsed over the
// layout and the shared partials.
var pageNames = []string{"runs", "run", "pipelines", "endpoints", "error"}

func (p *Page) parseTemplates() error {
	funcs := template.FuncMap{
		"age":        func(t time.Time) string { return ageText(time.Now(), t) },
		"until":      func(t time.Time) string { return untilText(time.Now(), t) },
		"iso":        isoTime,
		"clock":      clockTime,
		"stateLabel": stateLabel,
		"short":      shortID,
		"has":        slices.Contains[[]string],
		"assetURL": func(name, ver string) string {
			return "/ui/static/" + name + "?v=" + ver
		},
	}
	base, err := template.New("base").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/partials.html")
	if err != nil {
		return fmt.Errorf("statuspage: templates: %w", err)
	}
	p.pages = map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := base.Clone()
		if err != nil {
			return fmt.Errorf("statuspage: templates: %w", err)
		}
		if _, err := t.ParseFS(templateFS, "templates/"+name+".html"); err != nil {
			return fmt.Errorf("statuspage: templates: %w", err)
		}
		p.pages[name] = t
	}
	return nil
}

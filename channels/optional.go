package channels

import (
	"reflect"
	"strings"
)

// optionals are the behaviours a Channel may add, found by type
// assertion: a method whose name or signature is slightly off compiles
// and never runs, so the endpoint looks for near misses.
var optionals = []reflect.Type{
	reflect.TypeFor[AfterJoiner](),
	reflect.TypeFor[Interceptor](),
	reflect.TypeFor[Terminator](),
}

// checkOptional warns, once per channel type, about a method that looks
// meant for AfterJoiner, Interceptor or Terminator but does not make the type
// implement it: a wrong signature, a different case, or a pointer
// receiver on a channel the factory returns by value.
func (e *Endpoint) checkOptional(impl Channel) {
	t := reflect.TypeOf(impl)
	if _, seen := e.optionalChecked.LoadOrStore(t, struct{}{}); seen {
		return
	}
	for _, iface := range optionals {
		if t.Implements(iface) {
			continue
		}
		if t.Kind() != reflect.Pointer && reflect.PointerTo(t).Implements(iface) {
			e.log.Warn("channels: the channel's "+iface.Name()+" methods have pointer receivers but its factory returns a value: they will never run",
				"type", t.String(), "interface", "channels."+iface.Name())
			continue
		}
		var exact, missing []string
		for i := range iface.NumMethod() {
			want := iface.Method(i)
			found := false
			for j := range t.NumMethod() {
				m := t.Method(j)
				if !strings.EqualFold(m.Name, want.Name) {
					continue
				}
				found = true
				if m.Name == want.Name && sameSignature(m.Type, want.Type) {
					exact = append(exact, m.Name)
					continue
				}
				e.log.Warn("channels: a channel method looks meant for channels."+iface.Name()+" but does not implement it, so it will never run",
					"type", t.String(), "method", m.Name, "want", want.Name+strings.TrimPrefix(want.Type.String(), "func"))
			}
			if !found {
				missing = append(missing, want.Name)
			}
		}
		if len(exact) > 0 && len(missing) > 0 {
			e.log.Warn("channels: a channel has part of channels."+iface.Name()+" but not all of it, so none of it will run",
				"type", t.String(), "has", strings.Join(exact, ","), "missing", strings.Join(missing, ","))
		}
	}
}

// sameSignature reports whether method, a method of a concrete type (its
// receiver first), has the signature of want, an interface's method.
func sameSignature(method, want reflect.Type) bool {
	if method.NumIn() != want.NumIn()+1 || method.NumOut() != want.NumOut() || method.IsVariadic() != want.IsVariadic() {
		return false
	}
	for i := range want.NumIn() {
		if method.In(i+1) != want.In(i) {
			return false
		}
	}
	for i := range want.NumOut() {
		if method.Out(i) != want.Out(i) {
			return false
		}
	}
	return true
}

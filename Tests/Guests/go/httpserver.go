// A net/http server for socket mode: each answer says how many requests this process served,
// so a reset per connection shows as "count=1" every time.
package main

import (
	"fmt"
	"net/http"
)

var count int

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		count++
		fmt.Fprintf(w, "%s count=%d\n", r.URL.Path, count)
	})
	if err := http.ListenAndServe("127.0.0.1:8000", nil); err != nil {
		panic(err)
	}
}

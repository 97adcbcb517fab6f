package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println("hello from go", len(os.Args))
}

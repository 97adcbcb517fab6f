package main

import (
	"fmt"
	"os"
	"sync"
	"time"
)

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Println("read:", err)
		os.Exit(1)
	}
	results := make(chan int, 4)
	var group sync.WaitGroup
	for i := 1; i <= 4; i++ {
		group.Add(1)
		go func(n int) {
			defer group.Done()
			time.Sleep(time.Duration(n) * 5 * time.Millisecond)
			sum := 0
			for j := 0; j < n*1000000; j++ {
				sum += j % 7
			}
			results <- n * len(data)
		}(i)
	}
	group.Wait()
	close(results)
	total := 0
	for r := range results {
		total += r
	}
	fmt.Println("goroutines total", total)
	var p *int
	func() {
		defer func() { fmt.Println("recovered:", recover()) }()
		fmt.Println(*p)
	}()
}

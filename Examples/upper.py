# A filter for `kvmsandbox serve`: each request's body is stdin, the answer is stdout.
import sys
print(sys.stdin.read().upper())

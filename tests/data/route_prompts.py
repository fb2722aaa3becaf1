"""A labelled set of prompts for the router: (prompt, expected route).

Written to be realistic rather than easy: varied phrasing, questions about code,
requests that mention a route's keyword without meaning it, multi-sentence prompts,
pasted text, follow-ups, and a few in other languages. Routes: code (write, fix,
explain or review code), qa (a factual question), summarize (condense supplied text),
chat (conversation, opinions, advice, creative writing).
"""

from __future__ import annotations

ARTICLE = (
    "The city council voted on Tuesday to extend the tram line by 4.2 kilometres to the "
    "new hospital district. The extension, estimated at 310 million euros, will be funded "
    "jointly by the regional government and a European infrastructure grant. Construction "
    "is expected to start next spring and take three years. Opponents argued that buses "
    "would serve the area at a fraction of the cost, while supporters pointed to the "
    "projected 18,000 daily riders and reduced car traffic. The vote passed 27 to 14."
)
EMAIL = (
    "Hi team,\n\nQuick update on the Q3 launch. Design signed off on the onboarding flow "
    "last Friday, but the payments integration slipped by a week because the provider "
    "changed their webhook format. Maria is rewriting the handler and expects to finish "
    "by Wednesday. QA will need two extra days after that. Marketing asked whether we can "
    "still hit the 14th; I think the 21st is safer. Let me know if you disagree before "
    "Thursday's sync.\n\nThanks,\nDaniel"
)
PY_SNIPPET = (
    "def merge(a, b):\n    result = []\n    while a and b:\n        if a[0] < b[0]:\n"
    "            result.append(a.pop(0))\n        else:\n            result.append(b.pop(0))\n"
    "    return result + a + b\n"
)
JS_SNIPPET = (
    "const total = items.reduce((sum, item) => sum + item.price * item.qty, 0);\n"
    "console.log(`Total: ${total.toFixed(2)}`);\n"
)
TRACEBACK = (
    "Traceback (most recent call last):\n  File \"app.py\", line 12, in <module>\n"
    "    main()\n  File \"app.py\", line 8, in main\n    data = json.load(f)\n"
    "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)"
)
MEETING = (
    "Attendees: Ana, Bo, Chen. Ana reported the migration to Postgres 16 is done on "
    "staging; production is planned for the 3rd. Bo raised concerns about the backup "
    "window, which grows to 40 minutes after the migration. Chen will test incremental "
    "backups this week. Decision: go ahead on the 3rd if the backup test passes. Action "
    "items: Chen - backup test by Friday; Ana - write the rollback plan; Bo - notify "
    "support about the maintenance window."
)

LABELLED: list[tuple[str, str]] = [
    # --- code: writing, fixing, explaining, reviewing code --------------------------
    ("Write a Python function that checks whether a string is a palindrome.", "code"),
    ("implement binary search in rust", "code"),
    ("Can you write a bash script that renames all .jpeg files in a folder to .jpg?",
     "code"),
    ("I need a SQL query that returns the top 5 customers by total order value in 2023.",
     "code"),
    (f"This function is slow on big lists. Can you make it faster?\n\n```python\n"
     f"{PY_SNIPPET}```", "code"),
    (f"What does this do?\n\n{JS_SNIPPET}", "code"),
    (f"I get this error when I run my script:\n\n{TRACEBACK}\n\nThe file exists. Why?",
     "code"),
    ("Fix the bug: `for i in range(len(xs)): xs.remove(xs[i])` throws IndexError", "code"),
    ("Refactor this to use async/await instead of callbacks:\n\n"
     "fs.readFile('a.txt', (err, data) => {\n  if (err) throw err;\n"
     "  fs.writeFile('b.txt', data, (err) => { if (err) throw err; });\n});", "code"),
    ("Give me a regex that matches ISO 8601 dates like 2024-03-15.", "code"),
    ("Write unit tests with pytest for a function add(a, b).", "code"),
    ("Convert this Python to Go:\n\nnums = [x * x for x in range(10) if x % 2 == 0]",
     "code"),
    ("How do I reverse a linked list in C? Show me the code.", "code"),
    ("Create a Dockerfile for a Flask app that listens on port 8000.", "code"),
    ("#include <stdio.h>\nint main() {\n    int *p = NULL;\n    printf(\"%d\", *p);\n}\n"
     "why does this segfault", "code"),
    ("Write a React component that shows a counter with + and - buttons.", "code"),
    ("Review my code please:\n```go\nfunc sum(xs []int) int {\n\ttotal := 0\n"
     "\tfor _, x := range xs {\n\t\ttotal += x\n\t}\n\treturn total\n}\n```", "code"),
    ("generate a typescript interface for a user with id, name, email and optional "
     "phone", "code"),
    ("My pandas groupby returns NaN for some groups, here's the code: "
     "df.groupby('city')['price'].mean(). What am I doing wrong?", "code"),
    ("Implement an LRU cache class in Java with get and put in O(1).", "code"),
    ("write a function to flatten a nested list", "code"),
    ("Optimize this query: SELECT * FROM orders WHERE YEAR(created_at) = 2024 "
     "ORDER BY id;", "code"),
    ("How can I read a CSV file in Node.js line by line without loading it all into "
     "memory? Code example please.", "code"),
    ("Schreibe eine Python-Funktion, die die Fakultät einer Zahl berechnet.", "code"),
    ("Escribe una función en JavaScript que elimine los duplicados de un array.", "code"),
    ("Explain what this line does: `awk -F, '{sum += $3} END {print sum}' data.csv`",
     "code"),
    ("Add type hints to this:\n\ndef greet(name, times):\n    for _ in range(times):\n"
     "        print('hi', name)", "code"),
    ("Port this shell one-liner to PowerShell: find . -name '*.log' -mtime +7 -delete",
     "code"),
    ("Write a makefile target that runs the tests and then the linter.", "code"),
    ("The build fails with `error[E0382]: borrow of moved value: v`. How do I fix it?",
     "code"),
    ("Use numpy to compute the moving average of an array with window 5.", "code"),
    ("Give me a minimal FastAPI app with one GET endpoint that returns the server time.",
     "code"),
    ("Now add error handling to it.", "code"),  # follow-up; see FOLLOW_UPS
    ("class Stack:\n    def __init__(self):\n        self.items = []\n"
     "    def push(self, x):\n        self.items.append(x)\n\nadd pop and peek", "code"),
    ("Write a recursive function in Haskell to compute Fibonacci numbers.", "code"),

    # --- qa: factual questions ----------------------------------------------------------
    ("What is the capital of Australia?", "qa"),
    ("How far is the Moon from the Earth?", "qa"),
    ("Why is the sky blue?", "qa"),
    ("Who wrote One Hundred Years of Solitude?", "qa"),
    ("When did the Berlin Wall fall?", "qa"),
    ("What's the difference between a virus and a bacterium?", "qa"),
    ("How does a refrigerator keep food cold?", "qa"),
    ("Is a tomato a fruit or a vegetable?", "qa"),
    ("Explain how vaccines train the immune system.", "qa"),
    ("What does mmap do in an operating system?", "qa"),
    ("How many bones are in the adult human body?", "qa"),
    ("Which planet has the most moons?", "qa"),
    ("Define entropy in thermodynamics.", "qa"),
    ("what year did the first iphone come out", "qa"),
    ("Can you tell me how photosynthesis works?", "qa"),
    ("What is the boiling point of water at the top of Mount Everest?", "qa"),
    ("Where is the Great Barrier Reef located and why is it endangered?", "qa"),
    ("Does caffeine actually dehydrate you?", "qa"),
    ("What is a hash table and why are lookups O(1) on average?", "qa"),
    ("How do noise-cancelling headphones work?", "qa"),
    ("What causes inflation? I keep hearing different explanations.", "qa"),
    ("Who was the first woman to win a Nobel Prize?", "qa"),
    ("Quelle est la différence entre un crocodile et un alligator ?", "qa"),
    ("¿Cuál es el río más largo del mundo?", "qa"),
    ("Wie funktioniert ein Elektromotor?", "qa"),
    ("为什么天空是蓝色的？", "qa"),
    ("What is the speed of light in a vacuum?", "qa"),
    ("Describe the structure of DNA.", "qa"),
    ("How long does it take for light from the Sun to reach Earth?", "qa"),
    ("What are the main causes of the First World War?", "qa"),
    ("Is it true that goldfish have a three-second memory?", "qa"),
    ("What is the TCP three-way handshake?", "qa"),
    ("How do I convert Celsius to Fahrenheit?", "qa"),
    ("What's the population of Tokyo?", "qa"),
    ("Tell me about the history of the printing press.", "qa"),

    # --- summarize: condense supplied text ---------------------------------------------
    (f"Summarize this article in two sentences:\n\n{ARTICLE}", "summarize"),
    (f"{ARTICLE}\n\nTL;DR?", "summarize"),
    (f"tldr: {EMAIL}", "summarize"),
    (f"Can you condense this email into three bullet points?\n\n{EMAIL}", "summarize"),
    (f"Give me the key points of these meeting notes:\n{MEETING}", "summarize"),
    (f"{MEETING}\n\nSum up the decisions and action items.", "summarize"),
    (f"Please summarise the following for a busy executive. {ARTICLE}", "summarize"),
    (f"What's the gist of this? {EMAIL}", "summarize"),
    (f"Boil this down to one sentence: {ARTICLE}", "summarize"),
    (f"Recap the main points:\n\n{MEETING}", "summarize"),
    (f"Résume ce texte en quelques phrases : {ARTICLE}", "summarize"),
    (f"Fasse diesen Text kurz zusammen: {ARTICLE}", "summarize"),
    (f"Resume este correo en una frase: {EMAIL}", "summarize"),
    (f"请总结以下内容：{ARTICLE}", "summarize"),
    (f"Shorten this to under 50 words:\n{ARTICLE}", "summarize"),
    (f"Write an executive summary of these notes.\n\n{MEETING}", "summarize"),
    (f"{EMAIL}\n\nsummarize pls", "summarize"),
    (f"In a nutshell, what is this saying?\n\n{ARTICLE}", "summarize"),
    (f"Give me a short synopsis of the text below.\n\n{ARTICLE}", "summarize"),
    (f"Make a bullet-point summary of this thread:\n\n{EMAIL}\n\nRe: Sounds good, the 21st "
     "works for marketing too.\nRe: Agreed, let's lock it.", "summarize"),
    (f"Summarize what this code does in one paragraph:\n\n```python\n{PY_SNIPPET}```",
     "summarize"),
    ("Summarize the plot of the book I pasted earlier in three lines: a young wizard "
     "discovers his heritage, attends a school of magic, makes two loyal friends, and "
     "defeats the dark wizard who killed his parents when he tries to return.",
     "summarize"),
    (f"Condense: {MEETING}", "summarize"),
    (f"Summary please.\n\n{ARTICLE}\n\n{MEETING}", "summarize"),
    (f"Extract the three most important takeaways from this:\n\n{ARTICLE}", "summarize"),
    (f"Give me a one-line TL;DR of this update: {EMAIL}", "summarize"),
    (f"Can you sum this up for me? {MEETING}", "summarize"),
    (f"Please provide a brief summary of the passage below.\n\n{ARTICLE}", "summarize"),
    (f"Kannst du diese Notizen zusammenfassen?\n{MEETING}", "summarize"),
    (f"Riassumi questo articolo: {ARTICLE}", "summarize"),

    # --- chat: conversation, opinions, advice, creative writing -------------------------
    ("Hi! How are you today?", "chat"),
    ("hello", "chat"),
    ("Thanks, that was really helpful!", "chat"),
    ("Write a short poem about autumn rain.", "chat"),
    ("Tell me a joke about programmers.", "chat"),
    ("I'm feeling a bit down today. Work was exhausting and nobody noticed my effort.",
     "chat"),
    ("What do you think about pineapple on pizza?", "chat"),
    ("Let's play a game: you think of an animal and I'll guess it.", "chat"),
    ("Write a story about a robot who learns to paint, for a six-year-old.", "chat"),
    ("Can you help me come up with a name for my new puppy? She's a small black "
     "terrier.", "chat"),
    ("Pretend you're a pirate and describe your morning.", "chat"),
    ("I just got the job offer!!", "chat"),
    ("Should I learn the guitar or the piano first? I have about 30 minutes a day.",
     "chat"),
    ("Write a haiku about debugging at 3am.", "chat"),
    ("good night, talk tomorrow", "chat"),
    ("Give me some ideas for a birthday party for my dad who loves fishing.", "chat"),
    ("Help me write a polite message declining a wedding invitation.", "chat"),
    ("Would you rather be able to fly or be invisible?", "chat"),
    ("Bonjour ! Comment ça va ?", "chat"),
    ("Hola, ¿qué tal tu día?", "chat"),
    ("I can't decide what to cook tonight. I have eggs, spinach and some feta.", "chat"),
    ("Write a limerick about a cat named Python.", "chat"),
    ("Let's brainstorm names for a coffee shop that also sells books.", "chat"),
    ("ok", "chat"),
    ("That's not what I meant, try again but funnier.", "chat"),
    ("Compose a toast for my sister's wedding, warm but short.", "chat"),
    ("Do you ever get bored?", "chat"),
    ("Roleplay as a medieval innkeeper greeting a tired traveller.", "chat"),
    ("I'm nervous about my presentation tomorrow. Any encouragement?", "chat"),
    ("Translate 'see you tomorrow' into Japanese.", "chat"),
    ("Write a cover letter opening for a barista position, enthusiastic tone.", "chat"),
    ("What's your favourite season and why?", "chat"),
]

FOLLOW_UPS: dict[int, str] = {
    LABELLED.index(("Now add error handling to it.", "code")): "code",
}
"""Index into LABELLED -> the route of the turn before it (the conversation so far)."""

REVIEW = (
    "I bought this blender three months ago. At first it was great: smoothies in thirty "
    "seconds, easy to clean, quiet enough for early mornings. Then the lid started "
    "leaking, and last week the motor began to smell like burning plastic. Customer "
    "service told me the warranty does not cover 'misuse', though I only ever used it as "
    "the manual says. Two stars for the first months, none for the support."
)

HELD_OUT: list[tuple[str, str]] = [
    # Written after the router's rules were tuned on LABELLED, to check they generalize.
    ("Write me a Python script that pings a list of hosts and prints which are down.",
     "code"),
    ("why does my useEffect run twice in development?", "code"),
    ("Here's my Cargo error: `cannot borrow `x` as mutable more than once at a time`. "
     "What now?", "code"),
    ("SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;\n"
     "is this the right way to find duplicate names?", "code"),
    ("Make a shell one-liner that counts lines in all .py files recursively.", "code"),
    ("Can you turn this JSON into a Python dataclass? {\"id\": 1, \"tags\": [\"a\"], "
     "\"owner\": {\"name\": \"x\"}}", "code"),
    ("def f(x): return x if x < 2 else f(x-1) + f(x-2)\nmake it iterative", "code"),
    ("Écris un script Python qui lit un fichier CSV et affiche la moyenne de la colonne "
     "prix.", "code"),
    ("How many time zones does Russia have?", "qa"),
    ("What is the difference between RAM and storage?", "qa"),
    ("Who painted the ceiling of the Sistine Chapel?", "qa"),
    ("Explain the difference between weather and climate.", "qa"),
    ("Are octopuses really that intelligent?", "qa"),
    ("What does GDP measure, and what does it leave out?", "qa"),
    ("¿Cómo se forma el arcoíris?", "qa"),
    ("How does compound interest work? Give me an example with 5% a year.", "qa"),
    (f"{REVIEW}\n\nCan you summarize this review in one line?", "summarize"),
    (f"Key takeaways from this review? {REVIEW}", "summarize"),
    (f"tl;dr please\n\n{REVIEW}", "summarize"),
    (f"Condense the following into a tweet:\n{REVIEW}", "summarize"),
    (f"Give me a two-sentence summary of this customer review: {REVIEW}", "summarize"),
    (f"Zusammenfassung bitte: {REVIEW}", "summarize"),
    (f"Sum up the customer's main complaints.\n\n{REVIEW}", "summarize"),
    (f"Recap this for my manager, neutral tone: {REVIEW}", "summarize"),
    ("hey there :)", "chat"),
    ("Write a bedtime story about a sleepy dragon.", "chat"),
    ("I'm so tired of my commute. Talk me out of quitting?", "chat"),
    ("Do you like jazz?", "chat"),
    ("Give me three fun ideas for a rainy Sunday with kids.", "chat"),
    ("Can you write a funny poem for my colleague's farewell card?", "chat"),
    ("Merci beaucoup, c'était parfait !", "chat"),
    ("Let's do a quick role-play: you're my interviewer for a teaching job.", "chat"),
]

"""The prompts of benchmarks/answer_quality.py and what counts as a good answer.

Written for the benchmark, one set per route plus JSON requests with schemas:

- CODE: a small Python function, named in the prompt; ``tests`` are asserts run
  against the reply's code (``from solution import <name>`` first).
- QA: a short factual question; the reply must contain one of ``answers`` as a whole
  word or phrase, case-insensitively (numbers accepted as digits or words). No
  question contains its own answer, and a verbatim echo of the question is taken out
  of the reply before checking (for CHAT too).
- SUMMARIZE: a source paragraph (about 100 words); the summary must be shorter than the
  source (in words) and keep every one of its 3 main ``entities`` (each a list of
  accepted spellings).
- CHAT: a conversational prompt with a checkable property; ``checks`` must all pass
  and ``rule`` states them in words.
- JSON: a request sent with ``--format json --schema``; the final reply must validate.
"""

from __future__ import annotations

from typing import Any

CODE: list[dict[str, str]] = [
    {"name": "is_prime", "prompt": "Write a Python function `is_prime(n)` that returns True "
     "if the integer n is a prime number and False otherwise.",
     "tests": "assert is_prime(2) and is_prime(3) and is_prime(13) and is_prime(97)\n"
              "assert not is_prime(1) and not is_prime(0) and not is_prime(9)\n"
              "assert not is_prime(100) and not is_prime(-7)"},
    {"name": "factorial", "prompt": "Write a Python function `factorial(n)` that returns "
     "n! for a non-negative integer n.",
     "tests": "assert factorial(0) == 1\nassert factorial(1) == 1\n"
              "assert factorial(5) == 120\nassert factorial(10) == 3628800"},
    {"name": "reverse_string", "prompt": "Write a Python function `reverse_string(s)` that "
     "returns the string s reversed.",
     "tests": "assert reverse_string('hello') == 'olleh'\nassert reverse_string('') == ''\n"
              "assert reverse_string('ab c') == 'c ba'"},
    {"name": "fibonacci", "prompt": "Write a Python function `fibonacci(n)` that returns the "
     "n-th Fibonacci number, where fibonacci(0) is 0 and fibonacci(1) is 1.",
     "tests": "assert fibonacci(0) == 0\nassert fibonacci(1) == 1\nassert fibonacci(2) == 1\n"
              "assert fibonacci(10) == 55\nassert fibonacci(20) == 6765"},
    {"name": "sum_list", "prompt": "Write a Python function `sum_list(numbers)` that returns "
     "the sum of a list of numbers without using the built-in sum().",
     "tests": "assert sum_list([1, 2, 3]) == 6\nassert sum_list([]) == 0\n"
              "assert sum_list([-4, 4, 10]) == 10"},
    {"name": "find_max", "prompt": "Write a Python function `find_max(numbers)` that returns "
     "the largest number in a non-empty list.",
     "tests": "assert find_max([3, 9, 2]) == 9\nassert find_max([-5, -2, -9]) == -2\n"
              "assert find_max([7]) == 7"},
    {"name": "count_vowels", "prompt": "Write a Python function `count_vowels(text)` that "
     "returns how many vowels (a, e, i, o, u, upper or lower case) the string contains.",
     "tests": "assert count_vowels('hello') == 2\nassert count_vowels('AEIOU') == 5\n"
              "assert count_vowels('rhythm') == 0\nassert count_vowels('') == 0"},
    {"name": "is_palindrome", "prompt": "Write a Python function `is_palindrome(s)` that "
     "returns True if the string s reads the same forwards and backwards, else False.",
     "tests": "assert is_palindrome('racecar') and is_palindrome('abba')\n"
              "assert is_palindrome('')\nassert not is_palindrome('hello')"},
    {"name": "celsius_to_fahrenheit", "prompt": "Write a Python function "
     "`celsius_to_fahrenheit(c)` that converts a temperature from Celsius to Fahrenheit.",
     "tests": "assert celsius_to_fahrenheit(0) == 32\nassert celsius_to_fahrenheit(100) == 212\n"
              "assert abs(celsius_to_fahrenheit(-40) + 40) < 1e-9"},
    {"name": "is_even", "prompt": "Write a Python function `is_even(n)` that returns True "
     "when the integer n is even and False when it is odd.",
     "tests": "assert is_even(0) and is_even(4) and is_even(-2)\n"
              "assert not is_even(7) and not is_even(-3)"},
    {"name": "gcd", "prompt": "Write a Python function `gcd(a, b)` that returns the greatest "
     "common divisor of two positive integers.",
     "tests": "assert gcd(12, 18) == 6\nassert gcd(7, 5) == 1\nassert gcd(100, 10) == 10\n"
              "assert gcd(9, 9) == 9"},
    {"name": "square_all", "prompt": "Write a Python function `square_all(numbers)` that "
     "returns a new list with the square of each number in the list.",
     "tests": "assert square_all([1, 2, 3]) == [1, 4, 9]\nassert square_all([]) == []\n"
              "assert square_all([-2]) == [4]"},
    {"name": "remove_duplicates", "prompt": "Write a Python function "
     "`remove_duplicates(items)` that returns a list of the items without duplicates, "
     "keeping the order in which each item first appears.",
     "tests": "assert remove_duplicates([1, 2, 1, 3, 2]) == [1, 2, 3]\n"
              "assert remove_duplicates([]) == []\n"
              "assert remove_duplicates(['b', 'a', 'b']) == ['b', 'a']"},
    {"name": "word_count", "prompt": "Write a Python function `word_count(text)` that "
     "returns the number of words in a string, where words are separated by whitespace.",
     "tests": "assert word_count('the quick brown fox') == 4\nassert word_count('') == 0\n"
              "assert word_count('  one   two ') == 2"},
    {"name": "average", "prompt": "Write a Python function `average(numbers)` that returns "
     "the arithmetic mean of a non-empty list of numbers.",
     "tests": "assert average([1, 2, 3]) == 2\nassert average([10]) == 10\n"
              "assert abs(average([1, 2]) - 1.5) < 1e-9"},
    {"name": "capitalize_words", "prompt": "Write a Python function `capitalize_words(s)` "
     "that returns the string with the first letter of every word in upper case, "
     "e.g. 'hello world' becomes 'Hello World'.",
     "tests": "assert capitalize_words('hello world') == 'Hello World'\n"
              "assert capitalize_words('a b c') == 'A B C'\n"
              "assert capitalize_words('') == ''"},
    {"name": "flatten", "prompt": "Write a Python function `flatten(lists)` that takes a "
     "list of lists and returns one list with all their elements in order.",
     "tests": "assert flatten([[1, 2], [3], []]) == [1, 2, 3]\nassert flatten([]) == []\n"
              "assert flatten([['a'], ['b', 'c']]) == ['a', 'b', 'c']"},
    {"name": "count_occurrences", "prompt": "Write a Python function "
     "`count_occurrences(items, target)` that returns how many times target appears in "
     "the list items.",
     "tests": "assert count_occurrences([1, 2, 1, 1], 1) == 3\n"
              "assert count_occurrences([], 5) == 0\n"
              "assert count_occurrences(['a', 'b'], 'c') == 0"},
    {"name": "is_leap_year", "prompt": "Write a Python function `is_leap_year(year)` that "
     "returns True if the year is a leap year in the Gregorian calendar.",
     "tests": "assert is_leap_year(2024) and is_leap_year(2000)\n"
              "assert not is_leap_year(1900) and not is_leap_year(2023)"},
    {"name": "min_max", "prompt": "Write a Python function `min_max(numbers)` that returns a "
     "tuple (smallest, largest) for a non-empty list of numbers.",
     "tests": "assert min_max([3, 1, 2]) == (1, 3)\nassert min_max([5]) == (5, 5)\n"
              "assert min_max([-1, -8, 4]) == (-8, 4)"},
    {"name": "fizzbuzz", "prompt": "Write a Python function `fizzbuzz(n)` that returns "
     "'Fizz' if n is divisible by 3, 'Buzz' if divisible by 5, 'FizzBuzz' if divisible by "
     "both, and otherwise n as a string.",
     "tests": "assert fizzbuzz(3) == 'Fizz'\nassert fizzbuzz(10) == 'Buzz'\n"
              "assert fizzbuzz(30) == 'FizzBuzz'\nassert fizzbuzz(7) == '7'"},
    {"name": "sum_digits", "prompt": "Write a Python function `sum_digits(n)` that returns "
     "the sum of the decimal digits of a non-negative integer n.",
     "tests": "assert sum_digits(123) == 6\nassert sum_digits(0) == 0\n"
              "assert sum_digits(9999) == 36"},
]

QA: list[dict[str, Any]] = [
    {"prompt": "What is the capital of Japan?", "answers": ["Tokyo"]},
    {"prompt": "Who wrote Romeo and Juliet?", "answers": ["Shakespeare"]},
    {"prompt": "How many legs does a spider have?", "answers": ["8", "eight"]},
    {"prompt": "What is the chemical symbol for gold?", "answers": ["Au"]},
    {"prompt": "Which planet is known as the Red Planet?", "answers": ["Mars"]},
    {"prompt": "What is the largest ocean on Earth?", "answers": ["Pacific"]},
    {"prompt": "How many days are there in a week?", "answers": ["7", "seven"]},
    {"prompt": "At what temperature in degrees Celsius does water boil at sea level?",
     "answers": ["100", "one hundred"]},
    {"prompt": "Who painted the Mona Lisa?", "answers": ["Leonardo", "da Vinci"]},
    {"prompt": "Which gas do plants take in from the air to make their food?",
     "answers": ["carbon dioxide", "CO2", "CO₂"]},
    {"prompt": "What is the capital of Italy?", "answers": ["Rome", "Roma"]},
    {"prompt": "How many continents are there on Earth?", "answers": ["7", "seven"]},
    {"prompt": "What is the largest planet in our solar system?", "answers": ["Jupiter"]},
    {"prompt": "Which language is mainly spoken in Brazil?", "answers": ["Portuguese"]},
    {"prompt": "What is the square root of 81?", "answers": ["9", "nine"]},
    {"prompt": "Who was the first president of the United States?",
     "answers": ["Washington"]},
    {"prompt": "What is the currency of the United Kingdom?",
     "answers": ["pound", "pounds", "sterling"]},
    {"prompt": "How many minutes are there in an hour?", "answers": ["60", "sixty"]},
    {"prompt": "What is the tallest mountain in the world?", "answers": ["Everest"]},
    {"prompt": "What is the capital of Australia?", "answers": ["Canberra"]},
    {"prompt": "In which country are the pyramids of Giza?", "answers": ["Egypt"]},
    {"prompt": "How many sides does a hexagon have?", "answers": ["6", "six"]},
]


def _summary(source: str, *entities: list[str], ask: str = "Summarize this text:",
             ) -> dict[str, Any]:
    return {"prompt": f"{ask}\n\n{source}", "source": source, "entities": list(entities)}


SUMMARIZE: list[dict[str, Any]] = [
    _summary(
        "In July 1969, NASA's Apollo 11 mission landed the first people on the Moon. Neil "
        "Armstrong and Buzz Aldrin spent about two and a half hours walking on the surface "
        "while Michael Collins stayed in orbit aboard the command module Columbia. The "
        "lunar module, named Eagle, touched down in the Sea of Tranquility on July 20. "
        "Armstrong's first words on the surface were watched live by an estimated 600 "
        "million people around the world. The astronauts collected rock samples, set up "
        "experiments and planted a flag. The crew returned safely to Earth on July 24, "
        "splashing down in the Pacific Ocean, where the aircraft carrier USS Hornet "
        "recovered them.",
        ["Apollo 11", "Apollo"], ["Armstrong"], ["Aldrin"]),
    _summary(
        "Harbor Lane Bakery opened in Portland in 2015, when pastry chef Maria Delgado "
        "turned her weekend market stall into a small shop near the river. The bakery "
        "became known for sourdough loaves made with flour from local farms and for "
        "seasonal fruit tarts. By 2020 it employed twenty-two people and supplied bread to "
        "fourteen restaurants across the city. During the pandemic, Delgado started a "
        "delivery service that kept most of the staff employed. Last month the bakery won "
        "the Oregon Food Award for best independent bakery, and Delgado announced plans to "
        "open a second shop in Salem next year, together with a training programme for "
        "young bakers.",
        ["Harbor Lane"], ["Delgado"], ["Portland"]),
    _summary(
        "Marie Curie was born in Warsaw in 1867 and moved to Paris in 1891 to study "
        "physics and mathematics at the Sorbonne. Working with her husband Pierre Curie, "
        "she studied the radiation given off by uranium and discovered two new elements, "
        "polonium and radium. In 1903 she shared the Nobel Prize in Physics with Pierre "
        "and Henri Becquerel, becoming the first woman to win a Nobel Prize. After Pierre "
        "died in a street accident in 1906, she took over his teaching post. In 1911 she "
        "won a second Nobel Prize, this time in Chemistry, and she remains the only person "
        "honoured in two different sciences.",
        ["Marie Curie", "Curie"], ["Nobel"], ["Paris", "Sorbonne"]),
    _summary(
        "The city council of Riverton voted on Monday to replace the old Mill Street "
        "bridge, which engineers closed to trucks last year after finding cracks in its "
        "steel beams. Mayor Helen Park said the new bridge will have wider lanes, a "
        "protected cycle path and better lighting for pedestrians. The contract, worth 48 "
        "million dollars, went to Stonebridge Construction, which promised to finish the "
        "work within two years. During construction, buses will be diverted over the "
        "Northgate crossing, adding about ten minutes to some journeys. Several shop "
        "owners on Mill Street asked the council for help with lost business, and the "
        "mayor promised a support fund.",
        ["Riverton"], ["Helen Park", "Mayor Park"], ["Stonebridge"]),
    _summary(
        "FC Lindholm beat Ostvik United 3-1 on Saturday to reach the national cup final "
        "for the first time in forty years. Ostvik took the lead early through a header "
        "from captain Erik Dahl, but Lindholm's young striker Jonas Berg equalised before "
        "half-time with a low shot from the edge of the box. Berg scored again after the "
        "break, and substitute Mikkel Lund sealed the win in the final minute. Lindholm "
        "coach Anna Solheim praised her team's patience and said the club's academy had "
        "produced six of the starting eleven. The final will be played next month at the "
        "national stadium in Oslo against the defending champions.",
        ["Lindholm"], ["Ostvik"], ["Jonas Berg", "Berg"]),
    _summary(
        "Researchers at the University of Toronto have developed a blood test that can "
        "detect early signs of kidney disease, according to a study published this week "
        "in the journal Nature Medicine. The team, led by Dr. Amira Hassan, measured a set "
        "of twelve proteins in blood samples from more than 3,000 patients. The test "
        "correctly identified nine out of ten people who later developed the disease, "
        "often years before standard tests found anything. Hassan said the test is cheap "
        "to run and could be offered in ordinary clinics. The researchers now plan a "
        "larger trial with hospitals in Montreal and Vancouver before applying for "
        "approval from Health Canada.",
        ["Toronto"], ["Hassan"], ["kidney"]),
    _summary(
        "The Swedish company Nordtech launched its new Aurora X2 smartphone at an event in "
        "Stockholm on Thursday. Chief executive Lars Eklund said the phone's battery lasts "
        "up to three days and that its case is made from recycled aluminium. The Aurora X2 "
        "will go on sale in Europe next month at a price of 699 euros, with a launch in "
        "North America planned for the autumn. Analysts said the phone could help Nordtech "
        "win back customers after a difficult year in which its sales fell by eleven "
        "percent. Eklund also announced a repair programme that lets owners replace the "
        "battery and screen themselves.",
        ["Nordtech"], ["Aurora"], ["Eklund"]),
    _summary(
        "The Great Fire of London began in the early hours of 2 September 1666 in a bakery "
        "on Pudding Lane owned by Thomas Farriner. Strong winds from the east spread the "
        "flames quickly through the crowded wooden houses of the old city. For four days "
        "the fire burned, destroying more than 13,000 houses, 87 parish churches and the "
        "old St Paul's Cathedral. The diarist Samuel Pepys described the scene and buried "
        "his wine and cheese in his garden to save them. Afterwards the architect "
        "Christopher Wren designed a new St Paul's Cathedral, which was completed in 1711 "
        "and still stands today.",
        ["London"], ["Pudding Lane"], ["Pepys", "Wren"]),
    _summary(
        "Hurricane Delia made landfall on the west coast of Florida near Tampa late on "
        "Tuesday, bringing winds of up to 180 kilometres per hour and heavy rain. More "
        "than 400,000 homes lost power, and several coastal roads were closed by flooding. "
        "Governor Ruth Alvarez had ordered the evacuation of low-lying areas two days "
        "earlier, and officials said this had prevented many injuries. By Wednesday "
        "afternoon the storm had weakened as it moved inland towards Orlando. Emergency "
        "crews from Georgia and Alabama arrived to help restore electricity, which the "
        "local utility expects to take up to a week in the worst-hit neighbourhoods.",
        ["Delia"], ["Florida"], ["Tampa"]),
    _summary(
        "The Dublin band Silver Harbor released its third album, Northern Lights, on "
        "Friday after two years of work in a studio on the west coast of Ireland. Singer "
        "Aoife Brennan said the songs were written during long winter walks and are "
        "quieter than the band's earlier records, with more piano and strings. The first "
        "single, Lantern, has already been played more than five million times online. "
        "Silver Harbor will begin a tour of Europe in March, starting in Galway and ending "
        "in Berlin, with two nights planned in London. Critics have praised the album's "
        "careful arrangements and Brennan's warm, clear voice.",
        ["Silver Harbor"], ["Northern Lights"], ["Brennan", "Dublin"]),
    _summary(
        "Greenfield Foods has agreed to buy Sunny Valley Farms, a family-owned producer of "
        "organic vegetables, for 2.1 billion dollars, the companies announced on Monday. "
        "Greenfield's chief executive Robert Chen said the deal would make the company the "
        "largest seller of organic produce in the United States. Sunny Valley, founded in "
        "California in 1978, runs farms on more than 30,000 acres and sells to major "
        "supermarket chains. Its founder, Grace Miller, will join Greenfield's board. The "
        "deal still needs approval from regulators, and both companies expect it to be "
        "completed by the end of the year. Greenfield's shares rose four percent.",
        ["Greenfield"], ["Sunny Valley"], ["Robert Chen", "Chen"]),
    _summary(
        "The Norwegian explorer Ingrid Solberg has become the first woman to cross "
        "Greenland's ice sheet alone from east to west in winter. Solberg set off from the "
        "town of Tasiilaq in January, pulling a sledge that weighed more than 100 "
        "kilograms, and reached the west coast near Kangerlussuaq after 38 days. She faced "
        "temperatures below minus 40 degrees and storms that kept her in her tent for days "
        "at a time. Solberg said she used satellite messages to send weather data to "
        "scientists at the University of Bergen, who study how the ice sheet is changing. "
        "She now plans to write a book about the journey.",
        ["Solberg"], ["Greenland"], ["Tasiilaq", "Kangerlussuaq", "Bergen"]),
    _summary(
        "The novelist Tomas Reyes has won this year's Halden Prize for fiction with The "
        "Silent Orchard, a story about three generations of a family running an apple farm "
        "in northern Spain. The judges called the book tender and funny, and praised the "
        "way it shows a village changing over sixty years. Reyes, who grew up in Asturias "
        "and worked as a teacher before writing full time, said he based the grandmother "
        "in the novel on his own. The prize comes with 50,000 euros. The Silent Orchard "
        "has already been translated into fourteen languages, and a film version is being "
        "planned by a studio in Madrid.",
        ["Reyes"], ["Halden"], ["Silent Orchard"]),
    _summary(
        "The robotics team at Westbrook High School in Ohio won the national student "
        "robotics championship in Houston last weekend, beating 64 other schools. Their "
        "robot, nicknamed Sparky, had to sort coloured blocks and climb a ramp in under "
        "two minutes. Principal Dana Whitfield said the team of eleven students had worked "
        "on the robot every evening for five months, often in the school's small workshop. "
        "The team's captain, Priya Natarajan, wrote most of the control software. The win "
        "brings a prize of 20,000 dollars, which the school will spend on new equipment and "
        "on a summer programme for younger students.",
        ["Westbrook"], ["Houston"], ["Whitfield", "Natarajan"]),
    _summary(
        "On 17 December 1903, Orville and Wilbur Wright made the first controlled, powered "
        "flights in an aeroplane near Kitty Hawk, North Carolina. The brothers, who ran a "
        "bicycle shop in Dayton, Ohio, had spent years testing gliders and building their "
        "own wind tunnel. Orville piloted the first flight, which lasted twelve seconds and "
        "covered 37 metres. Later that day Wilbur flew 260 metres in 59 seconds. Only a "
        "few local people saw the flights, and newspapers paid little attention at first. "
        "Within five years, however, the Wright brothers were demonstrating their aircraft "
        "to large crowds in France and the United States.",
        ["Wright"], ["Kitty Hawk"], ["1903"]),
    _summary(
        "In September 1928 the Scottish scientist Alexander Fleming returned to his "
        "laboratory at St Mary's Hospital in London after a holiday and noticed something "
        "strange. A mould had grown on one of his dishes of bacteria, and around it the "
        "bacteria had died. Fleming identified the mould as Penicillium and called the "
        "substance it produced penicillin. He found it hard to produce in large amounts, "
        "and for a decade little happened. Then Howard Florey and Ernst Chain at the "
        "University of Oxford found a way to purify it, and by 1944 penicillin was saving "
        "thousands of soldiers' lives. The three men shared the Nobel Prize in 1945.",
        ["Fleming"], ["penicillin"], ["St Mary", "London"]),
    _summary(
        "A new high-speed railway between Madrid and Lisbon opened on Sunday, cutting the "
        "journey between the two capitals from about nine hours to three and a half. The "
        "line was built over eight years and cost 4.5 billion euros, shared between Spain, "
        "Portugal and the European Union. The operator, Iberia Rail, will run twelve "
        "trains a day in each direction, with fares starting at 39 euros. Portugal's "
        "transport minister, Carla Mendes, travelled on the first train and said the line "
        "would bring the two countries closer together. Airlines have already cut the "
        "number of flights on the route.",
        ["Madrid"], ["Lisbon"], ["Iberia Rail", "Mendes"]),
    _summary(
        "The European Space Agency launched its Helios-3 probe on Wednesday from the "
        "spaceport in Kourou, French Guiana, on an Ariane 6 rocket. Helios-3 will spend "
        "five years studying the Sun's outer atmosphere and the solar wind, passing closer "
        "to the Sun than any European spacecraft before it. Mission manager Dr. Paolo "
        "Ricci said its heat shield must survive temperatures of more than 500 degrees "
        "Celsius. The probe carries ten instruments built by universities and companies in "
        "eight countries. Scientists hope its data will improve forecasts of solar storms, "
        "which can damage satellites and power grids on Earth.",
        ["European Space Agency", "ESA"], ["Helios"], ["Kourou", "Ricci"]),
    _summary(
        "The Japanese runner Kenji Watanabe won the Boston Marathon on Monday in a time of "
        "two hours, six minutes and forty seconds, the fastest winning time in the race "
        "for a decade. Watanabe, who is 24 and trains in Sapporo, broke away from the lead "
        "group on the hills after the thirty-kilometre mark and finished nearly a minute "
        "ahead of Kenya's David Kiprono. In the women's race, Ethiopia's Selam Tesfaye "
        "defended her title. About 30,000 runners took part, and the weather was cool and "
        "dry. Watanabe said he would now rest before preparing for the world championships "
        "in the summer.",
        ["Watanabe"], ["Boston"], ["Kiprono", "Tesfaye", "Sapporo"]),
    _summary(
        "The Louvre in Paris has opened a new exhibition of paintings by Claude Monet, "
        "bringing together more than eighty works from museums and private collections in "
        "twelve countries. The show focuses on the garden Monet created at his home in "
        "Giverny, and includes several of his famous paintings of water lilies. The "
        "curator, Sophie Laurent, said it took four years to arrange the loans, some of "
        "which have never been shown in France before. Tickets must be booked in advance, "
        "and the museum expects more than half a million visitors before the exhibition "
        "closes in September. A smaller version will then travel to Tokyo.",
        ["Louvre"], ["Monet"], ["Giverny", "Laurent"]),
    _summary(
        "Ada Lovelace, born in London in 1815, was the daughter of the poet Lord Byron. "
        "Her mother encouraged her to study mathematics, and as a young woman she met the "
        "inventor Charles Babbage, who was designing a mechanical computer called the "
        "Analytical Engine. In 1843 Lovelace translated an article about the machine and "
        "added long notes of her own. One of them described a method for the engine to "
        "calculate Bernoulli numbers, which is often called the first computer program. "
        "She also suggested that such machines might one day work with music and symbols, "
        "not just numbers. The engine was never built in her lifetime.",
        ["Lovelace"], ["Babbage"], ["Analytical Engine"]),
]

COLORS = [["red"], ["orange"], ["yellow"], ["green"], ["blue"], ["purple", "violet"],
          ["pink"], ["brown"], ["black"], ["white"], ["gray", "grey"], ["indigo"],
          ["cyan"], ["magenta"], ["gold"], ["silver"], ["teal"], ["turquoise"]]
PLANETS = [["mercury"], ["venus"], ["earth"], ["mars"], ["jupiter"], ["saturn"],
           ["uranus"], ["neptune"]]
FARM = [["cow", "cows"], ["pig", "pigs"], ["sheep"], ["goat", "goats"],
        ["chicken", "chickens", "hen", "hens"], ["horse", "horses"], ["duck", "ducks"],
        ["donkey", "donkeys"], ["goose", "geese"], ["turkey", "turkeys"],
        ["rabbit", "rabbits"], ["llama", "llamas"]]
SEASONS = [["spring"], ["summer"], ["autumn", "fall"], ["winter"]]
RED_FRUITS = [["apple", "apples"], ["strawberry", "strawberries"], ["cherry", "cherries"],
              ["raspberry", "raspberries"], ["tomato", "tomatoes"],
              ["watermelon", "watermelons"], ["cranberry", "cranberries"],
              ["pomegranate", "pomegranates"], ["red currant", "redcurrant"]]
# "that" rhymes too, but nearly any sentence has it.
RHYMES_CAT = ["hat", "bat", "mat", "rat", "sat", "fat", "pat", "vat", "flat", "splat",
              "brat", "gnat", "spat", "chat", "drat", "scat"]


def _chat(prompt: str, rule: str, *checks: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, "rule": rule, "checks": list(checks)}


CHAT: list[dict[str, Any]] = [
    _chat("Say hello in French.", "contains 'bonjour' or 'salut'",
          {"kind": "contains_any", "words": ["bonjour", "salut"]}),
    _chat("How do you say thank you in Spanish?", "contains 'gracias'",
          {"kind": "contains_any", "words": ["gracias"]}),
    _chat("In one sentence, tell me how your day is going.", "exactly one sentence",
          {"kind": "sentences_at_most", "n": 1}),
    _chat("List three colors.", "names at least 3 different colours",
          {"kind": "distinct_from", "groups": COLORS, "n": 3}),
    _chat("Name three animals that live on a farm.",
          "names at least 3 different farm animals",
          {"kind": "distinct_from", "groups": FARM, "n": 3}),
    _chat("Tell me a short joke about cats.", "mentions a cat",
          {"kind": "contains_any", "words": ["cat", "cats", "kitten", "kitty"]}),
    _chat("Give me two fruits that are red.", "names at least 2 different red fruits",
          {"kind": "distinct_from", "groups": RED_FRUITS, "n": 2}),
    _chat("Say goodbye in German.", "contains 'auf Wiedersehen' or 'tschüss'",
          {"kind": "contains_any", "words": ["auf wiedersehen", "tschüss", "tschuss",
                                             "tschüs"]}),
    _chat("Answer with yes or no: is the sky blue on a clear day?", "starts with 'yes'",
          {"kind": "starts_with_any", "words": ["yes"]}),
    _chat("Count from one to five.", "contains 1, 2, 3, 4, 5 in order (digits or words)",
          {"kind": "in_order", "items": [["1", "one"], ["2", "two"], ["3", "three"],
                                         ["4", "four"], ["5", "five"]]}),
    _chat("Which two days make up the weekend?", "names both Saturday and Sunday",
          {"kind": "contains_all", "words": ["saturday", "sunday"]}),
    _chat("Suggest a name for my new puppy. Reply with just the name.",
          "at most 5 words", {"kind": "words_at_most", "n": 5}),
    _chat("Give me one word that rhymes with cat.", "contains a word rhyming with 'cat'",
          {"kind": "contains_any", "words": RHYMES_CAT}),
    _chat("In fewer than ten words, what is your favourite season?",
          "fewer than 10 words, naming a season",
          {"kind": "words_at_most", "n": 9},
          {"kind": "distinct_from", "groups": SEASONS, "n": 1}),
    _chat("Say good morning in Italian.", "contains 'buongiorno'",
          {"kind": "contains_any", "words": ["buongiorno", "buon giorno"]}),
    _chat("List the four seasons of the year.", "names all 4 seasons",
          {"kind": "distinct_from", "groups": SEASONS, "n": 4}),
    _chat("Tell me a very short story about a dragon.", "mentions a dragon",
          {"kind": "contains_any", "words": ["dragon", "dragons"]}),
    _chat("Name three planets.", "names at least 3 different planets",
          {"kind": "distinct_from", "groups": PLANETS, "n": 3}),
    _chat("Name two of the primary colors of paint.",
          "names at least 2 of red, blue, yellow",
          {"kind": "distinct_from", "groups": [["red"], ["blue"], ["yellow"]], "n": 2}),
    _chat("Thank you so much for your help!",
          "acknowledges the thanks ('welcome', 'glad', 'pleasure' or 'happy to')",
          {"kind": "contains_any", "words": ["welcome", "glad", "pleasure", "happy to"]}),
    _chat("Reply with a single word: what colour is grass?", "one word, 'green'",
          {"kind": "words_at_most", "n": 1},
          {"kind": "contains_any", "words": ["green"]}),
    _chat("Write a two-line poem about the moon.", "mentions the moon, at most 4 lines",
          {"kind": "contains_any", "words": ["moon"]}, {"kind": "lines_at_most", "n": 4}),
]

STR = {"type": "string", "minLength": 1, "maxLength": 60}
INT = {"type": "integer"}


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


def _json(prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, "schema": schema}


JSON: list[dict[str, Any]] = [
    _json("Give the name and age of a made-up person.",
          _obj({"name": STR, "age": {"type": "integer", "minimum": 0, "maximum": 130}})),
    _json("Describe the book Pride and Prejudice: its title, author and year.",
          _obj({"title": STR, "author": STR, "year": INT})),
    _json("Tell me about the city of Paris: its name and its country.",
          _obj({"city": STR, "country": STR})),
    _json("List the ingredients of a simple pancake recipe.",
          _obj({"dish": STR, "ingredients": {"type": "array", "items": STR,
                                             "minItems": 2, "maxItems": 8}})),
    _json("Make a to-do list with three household chores.",
          _obj({"tasks": {"type": "array", "items": STR, "minItems": 3, "maxItems": 3}})),
    _json("Describe today's weather in London.",
          _obj({"city": STR, "condition": {"enum": ["sunny", "cloudy", "rain", "snow"]},
                "celsius": {"type": "number"}})),
    _json("Describe a laptop for sale: its name, price and whether it is in stock.",
          _obj({"name": STR, "price": {"type": "number", "minimum": 0},
                "in_stock": {"type": "boolean"}})),
    _json("Give the colour red with its hex code.",
          _obj({"name": STR, "hex": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"}})),
    _json("Rate the film Titanic from 1 to 5 with a short comment.",
          _obj({"movie": STR, "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                "comment": STR})),
    _json("When and where did the first Moon landing happen?",
          _obj({"event": STR, "year": INT, "place": STR})),
    _json("Give three prime numbers.",
          _obj({"primes": {"type": "array", "items": INT, "minItems": 3, "maxItems": 3}})),
    _json("Describe a cat: its name, its age in years and whether it is friendly.",
          _obj({"name": STR, "age": {"type": "integer", "minimum": 0},
                "friendly": {"type": "boolean"}})),
    _json("Name a country and its capital city.", _obj({"country": STR, "capital": STR})),
    _json("Give a contact card for a made-up person with a name and an email address.",
          _obj({"name": STR, "email": {"type": "string", "pattern": "^[^@ ]+@[^@ ]+$"}})),
    _json("Describe a planet of the solar system: its name and how many moons it has.",
          _obj({"planet": STR, "moons": {"type": "integer", "minimum": 0}})),
    _json("Give a weekday and say whether it is part of the weekend.",
          _obj({"day": {"enum": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                 "Saturday", "Sunday"]},
                "weekend": {"type": "boolean"}})),
    _json("Describe a song: its title, its artist and its length in seconds.",
          _obj({"title": STR, "artist": STR,
                "seconds": {"type": "integer", "minimum": 1, "maximum": 3600}})),
    _json("Give two animals, each with the number of legs it has.",
          _obj({"animals": {"type": "array", "minItems": 2, "maxItems": 2,
                            "items": _obj({"animal": STR, "legs": INT})}})),
    _json("Describe an order in a shop: an order id, a customer name and a total in dollars.",
          _obj({"order_id": INT, "customer": STR, "total": {"type": "number",
                                                            "minimum": 0}})),
    _json("Give a sentence and the number of words in it.",
          _obj({"sentence": {"type": "string", "minLength": 1, "maxLength": 120},
                "words": {"type": "integer", "minimum": 1}})),
    _json("Describe a mountain: its name, its country and its height in metres.",
          _obj({"mountain": STR, "country": STR, "height_m": {"type": "integer",
                                                               "minimum": 0}})),
]

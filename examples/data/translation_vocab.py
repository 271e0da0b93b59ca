"""Vocabularies and hand-written sentence pairs for translation_make.py (English -> French).

Every French noun carries its gender (``m``) and whether it takes an elided article (``vowel``:
l'hôpital, l'église), so the templates can write le / la / l', au / à la / à l', mon / ma.
"""

from __future__ import annotations

from typing import NamedTuple


class Noun(NamedTuple):
    en: str
    fr: str
    m: bool  # masculine
    vowel: bool = False  # starts with a vowel sound: l', mon (even when feminine)


def _n(en, fr, g, vowel=False):
    return Noun(en, fr, g == "m", vowel)


PLACES = [
    _n("station", "gare", "f"),
    _n("museum", "musée", "m"),
    _n("bakery", "boulangerie", "f"),
    _n("pharmacy", "pharmacie", "f"),
    _n("post office", "poste", "f"),
    _n("library", "bibliothèque", "f"),
    _n("hospital", "hôpital", "m", True),
    _n("town hall", "mairie", "f"),
    _n("beach", "plage", "f"),
    _n("market", "marché", "m"),
    _n("bank", "banque", "f"),
    _n("church", "église", "f", True),
    _n("school", "école", "f", True),
    _n("airport", "aéroport", "m", True),
    _n("hotel", "hôtel", "m", True),
    _n("cinema", "cinéma", "m"),
    _n("park", "parc", "m"),
    _n("swimming pool", "piscine", "f"),
    _n("supermarket", "supermarché", "m"),
    _n("bus stop", "arrêt de bus", "m", True),
]
SHOPS = [
    p
    for p in PLACES
    if p.en
    in {
        "bakery",
        "pharmacy",
        "post office",
        "library",
        "museum",
        "bank",
        "market",
        "supermarket",
        "swimming pool",
        "cinema",
    }
]
SIGHTS = [
    _n("museum", "musée", "m"),
    _n("castle", "château", "m"),
    _n("cathedral", "cathédrale", "f"),
    _n("old town", "vieille ville", "f"),
    _n("zoo", "zoo", "m"),
    _n("botanical garden", "jardin botanique", "m"),
    _n("aquarium", "aquarium", "m", True),
    _n("old harbour", "vieux port", "m"),
    _n("flower market", "marché aux fleurs", "m"),
]
DRINKS = [
    _n("coffee", "café", "m"),
    _n("cup of tea", "tasse de thé", "f"),
    _n("glass of water", "verre d'eau", "m"),
    _n("orange juice", "jus d'orange", "m"),
    _n("hot chocolate", "chocolat chaud", "m"),
    _n("beer", "bière", "f"),
    _n("glass of red wine", "verre de vin rouge", "m"),
    _n("croissant", "croissant", "m"),
    _n("ham sandwich", "sandwich au jambon", "m"),
    _n("green salad", "salade verte", "f"),
    _n("slice of cake", "part de gâteau", "f"),
    _n("ice cream", "glace", "f"),
    _n("cheese omelette", "omelette au fromage", "f"),
    _n("bottle of sparkling water", "bouteille d'eau gazeuse", "f"),
]
FOODS = [  # plural
    _n("tomatoes", "tomates", "f"),
    _n("mushrooms", "champignons", "m"),
    _n("onions", "oignons", "m"),
    _n("carrots", "carottes", "f"),
    _n("olives", "olives", "f"),
    _n("apples", "pommes", "f"),
    _n("strawberries", "fraises", "f"),
    _n("potatoes", "pommes de terre", "f"),
    _n("eggs", "œufs", "m"),
    _n("green beans", "haricots verts", "m"),
    _n("oysters", "huîtres", "f"),
    _n("spicy dishes", "plats épicés", "m"),
]
RELATIVES = [
    _n("brother", "frère", "m"),
    _n("sister", "sœur", "f"),
    _n("mother", "mère", "f"),
    _n("father", "père", "m"),
    _n("grandmother", "grand-mère", "f"),
    _n("grandfather", "grand-père", "m"),
    _n("uncle", "oncle", "m", True),
    _n("aunt", "tante", "f"),
    _n("son", "fils", "m"),
    _n("daughter", "fille", "f"),
    _n("wife", "femme", "f"),
    _n("husband", "mari", "m"),
]
PROFESSIONS = [  # English, French masculine, French feminine (no article after "est")
    ("doctor", "médecin", "médecin"),
    ("teacher", "professeur", "professeure"),
    ("nurse", "infirmier", "infirmière"),
    ("baker", "boulanger", "boulangère"),
    ("lawyer", "avocat", "avocate"),
    ("cook", "cuisinier", "cuisinière"),
    ("engineer", "ingénieur", "ingénieure"),
    ("journalist", "journaliste", "journaliste"),
    ("dentist", "dentiste", "dentiste"),
    ("pharmacist", "pharmacien", "pharmacienne"),
    ("architect", "architecte", "architecte"),
    ("mechanic", "mécanicien", "mécanicienne"),
    ("farmer", "agriculteur", "agricultrice"),
    ("musician", "musicien", "musicienne"),
    ("police officer", "policier", "policière"),
]
ADJECTIVES = [  # English, French masculine, French feminine
    ("tired", "fatigué", "fatiguée"),
    ("happy", "content", "contente"),
    ("ill", "malade", "malade"),
    ("very busy", "très occupé", "très occupée"),
    ("sad", "triste", "triste"),
    ("in a good mood", "de bonne humeur", "de bonne humeur"),
    ("nervous", "nerveux", "nerveuse"),
    ("at home", "à la maison", "à la maison"),
    ("on holiday", "en vacances", "en vacances"),
]
CITIES = [
    (c, c)
    for c in (
        "Paris",
        "Lyon",
        "Marseille",
        "Bordeaux",
        "Toulouse",
        "Nantes",
        "Lille",
        "Nice",
        "Strasbourg",
        "Rome",
        "Berlin",
    )
] + [
    ("Montreal", "Montréal"),
    ("Brussels", "Bruxelles"),
    ("Geneva", "Genève"),
    ("London", "Londres"),
    ("Lisbon", "Lisbonne"),
    ("Venice", "Venise"),
]
WHEN = [
    ("tomorrow", "demain"),
    ("next week", "la semaine prochaine"),
    ("on Saturday", "samedi"),
    ("this weekend", "ce week-end"),
    ("in June", "en juin"),
    ("next month", "le mois prochain"),
    ("tonight", "ce soir"),
    ("in August", "en août"),
    ("on Friday evening", "vendredi soir"),
    ("after Christmas", "après Noël"),
]
DAYS = [
    ("Monday", "lundi"),
    ("Tuesday", "mardi"),
    ("Wednesday", "mercredi"),
    ("Thursday", "jeudi"),
    ("Friday", "vendredi"),
    ("Saturday", "samedi"),
    ("Sunday", "dimanche"),
]
HOURS = [
    ("two", "deux"),
    ("three", "trois"),
    ("four", "quatre"),
    ("five", "cinq"),
    ("six", "six"),
    ("seven", "sept"),
    ("eight", "huit"),
    ("nine", "neuf"),
    ("ten", "dix"),
    ("eleven", "onze"),
]
NUMBERS = HOURS[:5]
ANIMALS = [
    ("cats", "chats"),
    ("dogs", "chiens"),
    ("rabbits", "lapins"),
    ("chickens", "poules"),
    ("horses", "chevaux"),
    ("goldfish", "poissons rouges"),
    ("sheep", "moutons"),
    ("ducks", "canards"),
    ("goats", "chèvres"),
]
WEATHER = [
    ("It is cold", "Il fait froid"),
    ("It is hot", "Il fait chaud"),
    ("It is raining", "Il pleut"),
    ("It is snowing", "Il neige"),
    ("It is windy", "Il y a du vent"),
    ("The weather is nice", "Il fait beau"),
    ("The weather is bad", "Il fait mauvais"),
    ("It is foggy", "Il y a du brouillard"),
    ("It is sunny", "Il y a du soleil"),
]
WEATHER_TIMES = [
    ("today", "aujourd'hui"),
    ("this morning", "ce matin"),
    ("this afternoon", "cet après-midi"),
    ("this evening", "ce soir"),
]
OBJECTS = [
    _n("key", "clé", "f"),
    _n("book", "livre", "m"),
    _n("phone", "téléphone", "m"),
    _n("wallet", "portefeuille", "m"),
    _n("newspaper", "journal", "m"),
    _n("cup", "tasse", "f"),
    _n("bag", "sac", "m"),
    _n("laptop", "ordinateur portable", "m", True),
    _n("umbrella", "parapluie", "m"),
    _n("letter", "lettre", "f"),
    _n("remote control", "télécommande", "f"),
    _n("notebook", "cahier", "m"),
    _n("pen", "stylo", "m"),
    _n("passport", "passeport", "m"),
    _n("watch", "montre", "f"),
]
SURFACES = [
    _n("table", "table", "f"),
    _n("chair", "chaise", "f"),
    _n("sofa", "canapé", "m"),
    _n("bed", "lit", "m"),
    _n("shelf", "étagère", "f", True),
    _n("desk", "bureau", "m"),
    _n("piano", "piano", "m"),
    _n("fridge", "frigo", "m"),
    _n("armchair", "fauteuil", "m"),
]
ITEMS = [
    _n("jacket", "veste", "f"),
    _n("shirt", "chemise", "f"),
    _n("hat", "chapeau", "m"),
    _n("dress", "robe", "f"),
    _n("scarf", "écharpe", "f", True),
    _n("bicycle", "vélo", "m"),
    _n("watch", "montre", "f"),
    _n("lamp", "lampe", "f"),
    _n("backpack", "sac à dos", "m"),
    _n("sweater", "pull", "m"),
    _n("coat", "manteau", "m"),
    _n("umbrella", "parapluie", "m"),
    _n("camera", "appareil photo", "m", True),
    _n("teapot", "théière", "f"),
]
ACTIONS = [
    ("close the window", "fermer la fenêtre"),
    ("open the door", "ouvrir la porte"),
    ("speak more slowly", "parler plus lentement"),
    ("repeat that", "répéter"),
    ("call a taxi", "appeler un taxi"),
    ("help me", "m'aider"),
    ("turn off the light", "éteindre la lumière"),
    ("bring us the bill", "nous apporter l'addition"),
    ("write it down", "l'écrire"),
    ("take a photo of us", "nous prendre en photo"),
    ("wait a moment", "attendre un moment"),
    ("show me on the map", "me montrer sur la carte"),
]

FIXED = [
    ("Good morning, how are you?", "Bonjour, comment allez-vous ?"),
    ("Thank you very much for your help.", "Merci beaucoup pour votre aide."),
    ("I don't understand.", "Je ne comprends pas."),
    ("Do you speak English?", "Parlez-vous anglais ?"),
    ("My name is Paul.", "Je m'appelle Paul."),
    ("What is your name?", "Comment vous appelez-vous ?"),
    ("I am twenty years old.", "J'ai vingt ans."),
    ("Where do you live?", "Où habitez-vous ?"),
    ("I live in a small village near the sea.", "J'habite dans un petit village près de la mer."),
    ("The children are playing in the garden.", "Les enfants jouent dans le jardin."),
    ("She reads a book every evening.", "Elle lit un livre tous les soirs."),
    ("We have dinner at eight o'clock.", "Nous dînons à huit heures."),
    ("The shop is closed today.", "Le magasin est fermé aujourd'hui."),
    ("Can I pay by card?", "Est-ce que je peux payer par carte ?"),
    ("The bill, please.", "L'addition, s'il vous plaît."),
    ("I am looking for a room for two nights.", "Je cherche une chambre pour deux nuits."),
    ("Is breakfast included?", "Le petit-déjeuner est-il compris ?"),
    ("The room is very quiet.", "La chambre est très calme."),
    ("I need a doctor.", "J'ai besoin d'un médecin."),
    ("I have a headache.", "J'ai mal à la tête."),
    ("It is half past three.", "Il est trois heures et demie."),
    ("What time is it?", "Quelle heure est-il ?"),
    ("I left my keys at home.", "J'ai oublié mes clés à la maison."),
    ("The film starts at nine o'clock.", "Le film commence à neuf heures."),
    ("We missed the last bus.", "Nous avons raté le dernier bus."),
    ("He works in a hospital.", "Il travaille dans un hôpital."),
    ("They are watching television.", "Ils regardent la télévision."),
    ("I drink coffee every morning.", "Je bois du café tous les matins."),
    ("The soup is too hot.", "La soupe est trop chaude."),
    ("This cake is delicious.", "Ce gâteau est délicieux."),
    ("Can you recommend a good restaurant?", "Pouvez-vous recommander un bon restaurant ?"),
    ("I would like to book a table for four.", "Je voudrais réserver une table pour quatre personnes."),
    ("The dog is sleeping under the table.", "Le chien dort sous la table."),
    ("My phone battery is dead.", "Mon téléphone n'a plus de batterie."),
    ("Happy birthday!", "Joyeux anniversaire !"),
    ("See you tomorrow.", "À demain."),
    ("Have a good weekend.", "Bon week-end."),
    ("The museum is free on Sundays.", "Le musée est gratuit le dimanche."),
    ("The streets are full of tourists in summer.", "Les rues sont pleines de touristes en été."),
    ("It takes ten minutes on foot.", "Il faut dix minutes à pied."),
    ("Turn left at the traffic lights.", "Tournez à gauche au feu."),
    ("Go straight ahead.", "Allez tout droit."),
    ("The bank is next to the post office.", "La banque est à côté de la poste."),
    ("My brother plays the guitar.", "Mon frère joue de la guitare."),
    ("We are learning to swim.", "Nous apprenons à nager."),
    ("The water is cold.", "L'eau est froide."),
    ("I have two sisters and one brother.", "J'ai deux sœurs et un frère."),
    ("Our flat is on the third floor.", "Notre appartement est au troisième étage."),
    ("The lift is not working.", "L'ascenseur ne marche pas."),
    ("Please close the door behind you.", "Fermez la porte derrière vous, s'il vous plaît."),
    ("I prefer tea to coffee.", "Je préfère le thé au café."),
    ("The children go to school by bike.", "Les enfants vont à l'école à vélo."),
    ("The bread is still warm.", "Le pain est encore chaud."),
    ("We are staying at a hotel near the station.", "Nous logeons dans un hôtel près de la gare."),
    ("Where are the toilets?", "Où sont les toilettes ?"),
    ("How much is a ticket to Lyon?", "Combien coûte un billet pour Lyon ?"),
    ("I lost my passport.", "J'ai perdu mon passeport."),
    ("The concert was wonderful.", "Le concert était magnifique."),
    ("My grandmother makes the best jam.", "Ma grand-mère fait la meilleure confiture."),
    ("The window is open.", "La fenêtre est ouverte."),
    ("I don't eat meat.", "Je ne mange pas de viande."),
    ("The cat is on the roof.", "Le chat est sur le toit."),
    ("We walked along the river.", "Nous avons marché le long de la rivière."),
    ("My daughter is learning to read.", "Ma fille apprend à lire."),
    ("The meeting is on Thursday morning.", "La réunion est jeudi matin."),
    ("I will call you this evening.", "Je vous appellerai ce soir."),
    ("Can you help me carry this bag?", "Pouvez-vous m'aider à porter ce sac ?"),
    ("There are many trees in the park.", "Il y a beaucoup d'arbres dans le parc."),
    ("The road is closed because of the snow.", "La route est fermée à cause de la neige."),
    ("I usually get up at seven.", "D'habitude, je me lève à sept heures."),
    ("The tickets are sold out.", "Les billets sont épuisés."),
]
